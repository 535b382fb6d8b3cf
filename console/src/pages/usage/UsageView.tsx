// A tenant's usage over a period: cost and tokens by day (charts, each with its table), the
// breakdown by model, the calls themselves a page at a time, and spend by key over a month
// (dearest first, a page at a time: a tenant may have very many keys). Everything but the
// by-key table can be narrowed to one key. CSV downloads are made in the browser from the
// rows shown.

import { useMemo, useState } from 'react'
import type { KeySpend, Session, UsageRecord, UsageRow } from '../../api/types'
import { Button } from '../../components/Button'
import { DailyChart } from '../../components/Chart'
import { DataTable, type Column } from '../../components/DataTable'
import { LoadMore } from '../../components/LoadMore'
import { Section } from '../../components/Page'
import { ErrorNotice, Loading, Notice } from '../../components/Status'
import { useI18n, type I18n, type MessageKey } from '../../i18n'
import { dailySeries } from '../../lib/chartData'
import { downloadCsv, type CsvColumn } from '../../lib/csv'
import { daysBetween } from '../../lib/dates'
import { moneyForChart } from '../../lib/money'
import { totalsColumns, totalsCsv, TotalsFooter } from './columns'
import { KeySpendSection } from './KeySpend'
import { useUsageEvents, useUsageReport, type KeyFilter, type Range } from './queries'
import { lastDays, RangePicker } from './RangePicker'

interface DayRow extends UsageRow {
  day: string
}

/** The report's day rows, with a zero row for every day without usage. */
export function everyDay(rows: readonly UsageRow[], range: Range): DayRow[] {
  const byDay = new Map(rows.filter((row) => row.day).map((row) => [row.day as string, row]))
  return daysBetween(range.from, range.to).map(
    (day) =>
      ({ requests: 0, prompt_tokens: 0, cached_tokens: 0, completion_tokens: 0, cost_usd: '0.00', ...byDay.get(day), day }) as DayRow,
  )
}

interface Scope {
  tenantId: string
  range: Range
  keyId: KeyFilter
  i18n: I18n
}

function DailyCharts({ tenantId, range, keyId, i18n }: Scope) {
  const { t, day, money, number } = i18n
  const report = useUsageReport(tenantId, range, 'day', keyId)
  const rows = useMemo(() => report.data?.data ?? [], [report.data])
  const days = useMemo(() => everyDay(rows, range), [rows, range])
  const cost = useMemo(() => dailySeries(rows, range.from, range.to, [(row) => moneyForChart(row.cost_usd)]), [rows, range])
  const tokens = useMemo(
    () =>
      dailySeries(rows, range.from, range.to, [
        (row) => row.prompt_tokens,
        (row) => row.completion_tokens,
        (row) => row.cached_tokens,
      ]),
    [rows, range],
  )
  const costSeries = useMemo(
    () => [{ label: t('common.cost'), format: (value: number) => money(value.toFixed(value < 1 ? 4 : 2)) }],
    [t, money],
  )
  const tokenSeries = useMemo(
    () => [
      { label: t('common.promptTokens'), format: (value: number) => number(value, { notation: 'compact' }) },
      { label: t('common.completionTokens') },
      { label: t('common.cachedTokens') },
    ],
    [t, number],
  )
  if (report.isPending) return <Loading />
  if (report.isError) return <ErrorNotice error={report.error} onRetry={() => void report.refetch()} />
  const dayColumn: Column<DayRow> = { key: 'day', header: t('common.day'), rowHeader: true, cell: (row) => day(row.day) }
  const csv = () =>
    downloadCsv(`usage-by-day-${range.from}-${range.to}.csv`, [{ header: 'day', value: (row: UsageRow) => row.day }, ...totalsCsv()], rows)
  const download = <Button small onClick={csv}>{t('common.downloadCsv')}</Button>
  return (
    <div className="grid-2">
      <div className="section">
        <DailyChart
          title={t('usage.costByDay')}
          data={cost}
          series={costSeries}
          tableRows={days}
          rowKey={(row) => row.day}
          tableColumns={[dayColumn, { key: 'cost', header: t('common.cost'), numeric: true, cell: (row) => money(row.cost_usd) }]}
          actions={download}
        />
      </div>
      <div className="section">
        <DailyChart
          title={t('usage.tokensByDay')}
          data={tokens}
          series={tokenSeries}
          tableRows={days}
          rowKey={(row) => row.day}
          tableColumns={[
            dayColumn,
            { key: 'prompt', header: t('common.promptTokens'), numeric: true, cell: (row) => number(row.prompt_tokens) },
            { key: 'completion', header: t('common.completionTokens'), numeric: true, cell: (row) => number(row.completion_tokens) },
            { key: 'cached', header: t('common.cachedTokens'), numeric: true, cell: (row) => number(row.cached_tokens) },
          ]}
          actions={download}
        />
      </div>
    </div>
  )
}

function ByModel({ tenantId, range, keyId, i18n }: Scope) {
  const { t } = i18n
  const report = useUsageReport(tenantId, range, 'model', keyId)
  const rows = report.data?.data ?? []
  const title = t('usage.byModel')
  const first: Column<UsageRow> = { key: 'model', header: t('common.model'), rowHeader: true, cell: (row) => <code>{row.model ?? ''}</code> }
  const csvColumns: CsvColumn<UsageRow>[] = [{ header: 'model', value: (row) => row.model }, ...totalsCsv()]
  return (
    <Section
      title={title}
      actions={
        <Button small disabled={!rows.length} onClick={() => downloadCsv(`usage-by-model-${range.from}-${range.to}.csv`, csvColumns, rows)}>
          {t('common.downloadCsv')}
        </Button>
      }
    >
      {report.isPending ? (
        <Loading />
      ) : report.isError ? (
        <ErrorNotice error={report.error} onRetry={() => void report.refetch()} />
      ) : (
        <DataTable
          caption={title}
          hideCaption
          columns={[first, ...totalsColumns(i18n)]}
          rows={rows}
          rowKey={(row, index) => `${row.model ?? ''}-${index}`}
          footer={rows.length > 1 ? <TotalsFooter rows={rows} label={t('common.total')} i18n={i18n} /> : undefined}
        />
      )}
    </Section>
  )
}

function Events({ tenantId, range, keyId, i18n }: Scope) {
  const { t, dateTime, number, money, duration } = i18n
  const events = useUsageEvents(tenantId, range, keyId)
  const columns: Column<UsageRecord>[] = [
    { key: 'time', header: t('usage.time'), nowrap: true, cell: (row) => dateTime(row.created_at) },
    { key: 'model', header: t('common.model'), cell: (row) => <code>{row.model}</code> },
    { key: 'key', header: t('common.key'), cell: (row) => (row.key_id ? <code>{row.key_id}</code> : t('usage.noKey')) },
    { key: 'status', header: t('usage.status'), numeric: true, cell: (row) => row.status },
    { key: 'prompt', header: t('common.promptTokens'), numeric: true, cell: (row) => number(row.prompt_tokens) },
    { key: 'completion', header: t('common.completionTokens'), numeric: true, cell: (row) => number(row.completion_tokens) },
    { key: 'cost', header: t('common.cost'), numeric: true, cell: (row) => money(row.cost) },
    { key: 'latency', header: t('usage.latency'), numeric: true, cell: (row) => duration(row.latency_ms) },
    { key: 'ttft', header: t('usage.ttft'), numeric: true, cell: (row) => duration(row.ttft_ms) },
    {
      key: 'cache',
      header: t('usage.cache'),
      cell: (row) => (['hit', 'miss', 'none'].includes(row.cache_status) ? t(`usage.cache.${row.cache_status}` as MessageKey) : row.cache_status),
    },
  ]
  const csv: CsvColumn<UsageRecord>[] = [
    { header: 'request_id', value: (row) => row.request_id },
    { header: 'created_at', value: (row) => row.created_at },
    { header: 'model', value: (row) => row.model },
    { header: 'key_id', value: (row) => row.key_id },
    { header: 'status', value: (row) => row.status },
    { header: 'prompt_tokens', value: (row) => row.prompt_tokens },
    { header: 'cached_tokens', value: (row) => row.cached_tokens },
    { header: 'completion_tokens', value: (row) => row.completion_tokens },
    { header: 'cost_usd', value: (row) => row.cost },
    { header: 'latency_ms', value: (row) => row.latency_ms },
    { header: 'ttft_ms', value: (row) => row.ttft_ms },
    { header: 'cache_status', value: (row) => row.cache_status },
  ]
  return (
    <Section
      title={t('usage.events')}
      actions={
        <Button small disabled={!events.items.length} onClick={() => downloadCsv(`calls-${range.from}-${range.to}.csv`, csv, events.items)}>
          {t('common.downloadCsv')}
        </Button>
      }
    >
      <p className="muted">
        {t('usage.eventsNote')} {t('common.downloadLoaded')}
      </p>
      {events.query.isPending ? (
        <Loading />
      ) : events.query.isError ? (
        <ErrorNotice error={events.query.error} onRetry={() => void events.query.refetch()} />
      ) : (
        <>
          <DataTable caption={t('usage.events')} hideCaption columns={columns} rows={events.items} rowKey={(row) => row.request_id} />
          <LoadMore shown={events.items.length} hasMore={events.hasMore} loading={events.loadingMore} onLoadMore={events.loadMore} />
        </>
      )}
    </Section>
  )
}

/** Which key the page is narrowed to, and the way back to every key. */
function KeyFilterNotice({ keyId, onClear, i18n }: { keyId: string; onClear: () => void; i18n: I18n }) {
  const { t } = i18n
  return (
    <div role="status" className="notice">
      <p>
        {t('usage.onlyKey')} <code>{keyId}</code>{' '}
        <Button small onClick={onClear}>
          {t('usage.everyKey')}
        </Button>
      </p>
    </div>
  )
}

export function UsageView({ tenantId, session }: { tenantId: string; session: Session }) {
  const i18n = useI18n()
  const [range, setRange] = useState<Range>(() => lastDays(30))
  const [keyId, setKeyId] = useState<KeyFilter>(null)
  const member = session.role === 'member'
  const scope = { tenantId, range, keyId: member ? null : keyId, i18n }
  const choose = (row: KeySpend) => {
    if (row.key_id) setKeyId(row.key_id)
  }
  return (
    <>
      {member ? <Notice>{i18n.t('usage.memberNote')}</Notice> : null}
      <RangePicker range={range} onChange={setRange} />
      {scope.keyId ? <KeyFilterNotice keyId={scope.keyId} onClear={() => setKeyId(null)} i18n={i18n} /> : null}
      <DailyCharts {...scope} />
      <ByModel {...scope} />
      {member ? null : <KeySpendSection tenantId={tenantId} chosen={scope.keyId} onChoose={choose} i18n={i18n} />}
      <Events {...scope} />
    </>
  )
}
