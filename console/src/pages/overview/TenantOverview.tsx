// A tenant at a glance: its credit, what it spent today and this month against its budgets,
// this month's calls and tokens (from the spend report, not from events), recent alerts.

import { mayAdministerTenant } from '../../api/session'
import type { Budget, Session, TenantView, UsageRow } from '../../api/types'
import { DataTable } from '../../components/DataTable'
import { Figures, Section } from '../../components/Page'
import { ErrorNotice, Loading, Notice } from '../../components/Status'
import { useI18n, type I18n } from '../../i18n'
import { monthStart, todayUtc } from '../../lib/dates'
import { percentOf } from '../../lib/money'
import { sumRows } from '../usage/columns'
import { useUsageReport } from '../usage/queries'
import { useAlerts, useTenant } from './queries'

function Credit({ tenant, i18n }: { tenant: TenantView; i18n: I18n }) {
  const { t, money } = i18n
  return (
    <Section title={t('overview.credit')}>
      <Figures
        items={[
          { label: t('overview.balance'), value: money(tenant.balance_usd) },
          { label: t('overview.available'), value: money(tenant.available_usd) },
          { label: t('overview.held'), value: money(tenant.held_usd) },
        ]}
      />
      {tenant.billing === 'postpaid' ? <p className="muted">{t('overview.postpaidNote')}</p> : null}
    </Section>
  )
}

function Budgets({ budgets, today, month, i18n }: { budgets: readonly Budget[]; today: string; month: string; i18n: I18n }) {
  const { t, money } = i18n
  if (!budgets.length) return <p className="muted">{t('overview.noBudgets')}</p>
  return (
    <div>
      {budgets.map((budget, index) => {
        const spent = budget.period === 'day' ? today : month
        const percent = percentOf(spent, budget.amount_usd)
        const period = t(budget.period === 'day' ? 'budget.day' : 'budget.month')
        const label = `${period} (${t(budget.enforcement === 'soft' ? 'overview.enforcement.soft' : 'overview.enforcement.hard')})`
        return (
          <div className="meter-row" key={`${budget.period}-${index}`}>
            <span id={`budget-${index}`}>{label}</span>
            <progress
              aria-labelledby={`budget-${index}`}
              max={100}
              value={Math.min(percent ?? 0, 100)}
              title={t('overview.budgetPercent', { period })}
            />
            <span>
              {t('overview.budgetLine', { spent: money(spent), cap: money(budget.amount_usd) })}
              {percent !== null ? ` · ${percent}%` : ''}
            </span>
          </div>
        )
      })}
    </div>
  )
}

function Alerts({ tenantId, i18n }: { tenantId: string; i18n: I18n }) {
  const { t, money, dateTime } = i18n
  const alerts = useAlerts(tenantId)
  if (alerts.isPending) return <Loading />
  if (alerts.isError) return <ErrorNotice error={alerts.error} onRetry={() => void alerts.refetch()} />
  const recent = [...alerts.data.data].sort((left, right) => right.created_at_ms - left.created_at_ms).slice(0, 5)
  return (
    <DataTable
      caption={t('overview.alerts')}
      hideCaption
      empty={t('overview.noAlerts')}
      rows={recent}
      rowKey={(alert) => alert.id}
      columns={[
        { key: 'when', header: t('overview.when'), nowrap: true, cell: (alert) => dateTime(Math.floor(alert.created_at_ms / 1000)) },
        {
          key: 'alert',
          header: t('overview.alert'),
          cell: (alert) =>
            t('overview.alertLine', {
              counter: alert.counter,
              cap: money(alert.cap_usd),
              spent: money(alert.spent_usd),
              enforcement: t(alert.enforcement === 'soft' ? 'overview.enforcement.soft' : 'overview.enforcement.hard'),
            }),
        },
      ]}
    />
  )
}

const zero: UsageRow = { requests: 0, prompt_tokens: 0, cached_tokens: 0, completion_tokens: 0, cost_usd: '0.00' }

export function TenantOverview({ tenantId, session }: { tenantId: string; session: Session }) {
  const i18n = useI18n()
  const { t, money, number } = i18n
  const admin = mayAdministerTenant(session)
  const today = todayUtc()
  const tenant = useTenant(tenantId, admin)
  const todays = useUsageReport(tenantId, { from: today, to: today }, '')
  const months = useUsageReport(tenantId, { from: monthStart(today), to: today }, '')
  const todayTotals = todays.data ? sumRows(todays.data.data) : zero
  const monthTotals = months.data ? sumRows(months.data.data) : zero
  const usageError = todays.error ?? months.error
  return (
    <>
      {admin ? null : <Notice>{t('overview.memberNote')}</Notice>}
      {admin ? (
        tenant.isPending ? (
          <Loading />
        ) : tenant.isError ? (
          <ErrorNotice error={tenant.error} onRetry={() => void tenant.refetch()} />
        ) : (
          <Credit tenant={tenant.data} i18n={i18n} />
        )
      ) : null}
      <Section title={t('overview.spend')}>
        {usageError ? (
          <ErrorNotice error={usageError} />
        ) : todays.isPending || months.isPending ? (
          <Loading />
        ) : (
          <Figures
            items={[
              { label: t('overview.today'), value: money(todayTotals.cost_usd) },
              { label: t('overview.thisMonth'), value: money(monthTotals.cost_usd) },
              { label: t('overview.callsMonth'), value: number(monthTotals.requests) },
              { label: t('overview.tokensMonth'), value: number(monthTotals.prompt_tokens + monthTotals.completion_tokens) },
            ]}
          />
        )}
        {admin && tenant.data ? (
          <>
            <h3>{t('overview.budgets')}</h3>
            <Budgets budgets={tenant.data.budgets ?? []} today={todayTotals.cost_usd} month={monthTotals.cost_usd} i18n={i18n} />
          </>
        ) : null}
      </Section>
      {admin ? (
        <Section title={t('overview.alerts')}>
          <Alerts tenantId={tenantId} i18n={i18n} />
        </Section>
      ) : null}
    </>
  )
}
