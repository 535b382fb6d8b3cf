// One tenant, as its operator sees it: the tenant's own views (overview, usage, keys,
// billing), and what only an operator does: credit postings, limits and budgets.

import { useState, type FormEvent } from 'react'
import type { Session, TenantView } from '../../api/types'
import { Button } from '../../components/Button'
import { Checkbox } from '../../components/Field'
import { Page, Section } from '../../components/Page'
import { draftOf, PolicyFields, policyOf, type PolicyDraft, type PolicyErrors } from '../../components/PolicyFields'
import { ErrorNotice, Loading, Notice } from '../../components/Status'
import { useI18n, type MessageKey } from '../../i18n'
import { Link } from '../../lib/router'
import { BillingView } from '../billing/BillingView'
import { KeysView } from '../keys/KeysView'
import { TenantOverview } from '../overview/TenantOverview'
import { useTenant } from '../overview/queries'
import { UsageView } from '../usage/UsageView'
import { PostingDialog } from './PostingDialog'
import { useUpdateTenant, type PostingKind } from './queries'

export type TenantViewName = 'overview' | 'usage' | 'keys' | 'billing'

const VIEWS: { view: TenantViewName; label: MessageKey; path: string }[] = [
  { view: 'overview', label: 'nav.overview', path: '' },
  { view: 'usage', label: 'nav.usage', path: '/usage' },
  { view: 'keys', label: 'nav.keys', path: '/keys' },
  { view: 'billing', label: 'nav.billing', path: '/billing' },
]

function PolicyForm({ tenant }: { tenant: TenantView }) {
  const { t } = useI18n()
  const update = useUpdateTenant(tenant.id)
  const [draft, setDraft] = useState<PolicyDraft>(() => draftOf(tenant.limits, tenant.budgets))
  const [logPrompts, setLogPrompts] = useState(tenant.log_prompts ?? false)
  const [errors, setErrors] = useState<PolicyErrors>({})
  const submit = (event: FormEvent) => {
    event.preventDefault()
    const { limits, budgets, errors: found } = policyOf(draft)
    setErrors(found)
    if (Object.keys(found).length) return
    update.mutate({ limits, budgets, log_prompts: logPrompts })
  }
  return (
    <Section title={t('tenants.settings')}>
      <form onSubmit={submit} noValidate>
        <PolicyFields draft={draft} onChange={setDraft} errors={errors} />
        <Checkbox label={t('tenants.logPrompts')} hint={t('tenants.logPromptsHint')} checked={logPrompts} onChange={(event) => setLogPrompts(event.target.checked)} />
        {update.isError ? <ErrorNotice error={update.error} /> : null}
        {update.isSuccess ? <Notice tone="ok">{t('tenants.settingsSaved')}</Notice> : null}
        <Button type="submit" variant="primary" busy={update.isPending}>
          {update.isPending ? t('common.saving') : t('common.save')}
        </Button>
      </form>
    </Section>
  )
}

export default function TenantPage({ tenantId, view, session }: { tenantId: string; view: TenantViewName; session: Session }) {
  const { t } = useI18n()
  const tenant = useTenant(tenantId)
  const [posting, setPosting] = useState<PostingKind | null>(null)
  const [posted, setPosted] = useState<string | null>(null)
  const base = `/tenants/${encodeURIComponent(tenantId)}`
  const viewLabel = t(VIEWS.find((one) => one.view === view)?.label ?? 'nav.overview')
  const title = tenant.data ? `${tenant.data.name}: ${viewLabel}` : viewLabel
  return (
    <Page
      title={title}
      actions={
        <>
          <Link to="/tenants">{t('tenants.back')}</Link>
          <Button variant="primary" onClick={() => setPosting('top_up')} disabled={!tenant.data}>
            {t('tenants.topUp')}
          </Button>
          <Button onClick={() => setPosting('refund')} disabled={!tenant.data}>
            {t('tenants.refund')}
          </Button>
          <Button onClick={() => setPosting('adjustment')} disabled={!tenant.data}>
            {t('tenants.adjust')}
          </Button>
        </>
      }
    >
      <p className="muted">
        <code>{tenantId}</code>
      </p>
      <nav aria-label={t('tenants.views')}>
        <ul className="subnav">
          {VIEWS.map((one) => (
            <li key={one.view}>
              <Link to={`${base}${one.path}`} aria-current={one.view === view ? 'page' : undefined}>
                {t(one.label)}
              </Link>
            </li>
          ))}
        </ul>
      </nav>
      {posted ? <Notice tone="ok">{posted}</Notice> : null}
      {tenant.isPending ? (
        <Loading />
      ) : tenant.isError ? (
        <ErrorNotice error={tenant.error} onRetry={() => void tenant.refetch()} />
      ) : (
        <>
          {view === 'overview' ? (
            <>
              <TenantOverview tenantId={tenantId} session={session} />
              <PolicyForm key={tenant.data.id} tenant={tenant.data} />
            </>
          ) : null}
          {view === 'usage' ? <UsageView tenantId={tenantId} session={session} /> : null}
          {view === 'keys' ? <KeysView tenantId={tenantId} session={session} /> : null}
          {view === 'billing' ? <BillingView tenantId={tenantId} /> : null}
        </>
      )}
      <PostingDialog tenantId={tenantId} kind={posting} onClose={() => setPosting(null)} onPosted={setPosted} />
    </Page>
  )
}
