import type { Session } from '../../api/types'
import { Page } from '../../components/Page'
import { useI18n } from '../../i18n'
import { KeysView } from './KeysView'

export default function KeysPage({ tenantId, session }: { tenantId: string; session: Session }) {
  const { t } = useI18n()
  return (
    <Page title={t('keys.title')}>
      <KeysView tenantId={tenantId} session={session} />
    </Page>
  )
}
