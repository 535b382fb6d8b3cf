import type { Session } from '../../api/types'
import { Page } from '../../components/Page'
import { useI18n } from '../../i18n'
import { TenantOverview } from './TenantOverview'

export default function OverviewPage({ tenantId, session }: { tenantId: string; session: Session }) {
  const { t } = useI18n()
  return (
    <Page title={t('overview.title')}>
      <TenantOverview tenantId={tenantId} session={session} />
    </Page>
  )
}
