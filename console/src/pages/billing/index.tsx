import { Page } from '../../components/Page'
import { useI18n } from '../../i18n'
import { BillingView } from './BillingView'

export default function BillingPage({ tenantId }: { tenantId: string }) {
  const { t } = useI18n()
  return (
    <Page title={t('billing.title')}>
      <BillingView tenantId={tenantId} />
    </Page>
  )
}
