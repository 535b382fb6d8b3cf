import type { Session } from '../../api/types'
import { Page } from '../../components/Page'
import { useI18n } from '../../i18n'
import { UsageView } from './UsageView'

export default function UsagePage({ tenantId, session }: { tenantId: string; session: Session }) {
  const { t } = useI18n()
  return (
    <Page title={t('usage.title')}>
      <UsageView tenantId={tenantId} session={session} />
    </Page>
  )
}
