// Invoices with their lines, and the ledger a page at a time; both downloadable as CSV or
// JSON from what was fetched.

import { useState } from 'react'
import type { Invoice, InvoiceLine, Transaction } from '../../api/types'
import { Button } from '../../components/Button'
import { DataTable, type Column } from '../../components/DataTable'
import { SelectField } from '../../components/Field'
import { LoadMore } from '../../components/LoadMore'
import { Section } from '../../components/Page'
import { ErrorNotice, Loading } from '../../components/Status'
import { useI18n, type I18n, type MessageKey } from '../../i18n'
import { downloadCsv, downloadJson, type CsvColumn } from '../../lib/csv'
import { balanceChange, CREDIT_KINDS } from './ledger'
import { useInvoices, useLedger } from './queries'

function lineColumns({ t, number, money }: I18n): Column<InvoiceLine>[] {
  return [
    { key: 'model', header: t('common.model'), rowHeader: true, cell: (line) => <code>{line.model}</code> },
    { key: 'requests', header: t('common.requests'), numeric: true, cell: (line) => number(line.requests) },
    { key: 'prompt', header: t('common.promptTokens'), numeric: true, cell: (line) => number(line.prompt_tokens) },
    { key: 'cached', header: t('common.cachedTokens'), numeric: true, cell: (line) => number(line.cached_tokens) },
    { key: 'completion', header: t('common.completionTokens'), numeric: true, cell: (line) => number(line.completion_tokens) },
    { key: 'cost', header: t('common.cost'), numeric: true, cell: (line) => money(line.cost_usd) },
  ]
}

const invoiceCsv: CsvColumn<{ invoice: Invoice; line: InvoiceLine }>[] = [
  { header: 'invoice_id', value: (row) => row.invoice.id },
  { header: 'period', value: (row) => row.invoice.period },
  { header: 'model', value: (row) => row.line.model },
  { header: 'requests', value: (row) => row.line.requests },
  { header: 'prompt_tokens', value: (row) => row.line.prompt_tokens },
  { header: 'cached_tokens', value: (row) => row.line.cached_tokens },
  { header: 'completion_tokens', value: (row) => row.line.completion_tokens },
  { header: 'cost_usd', value: (row) => row.line.cost_usd },
  { header: 'invoice_total_usd', value: (row) => row.invoice.total_usd },
]

function Invoices({ tenantId, i18n }: { tenantId: string; i18n: I18n }) {
  const { t, money, dateTime } = i18n
  const invoices = useInvoices(tenantId)
  const list = invoices.data?.data ?? []
  const sorted = [...list].sort((left, right) => right.period.localeCompare(left.period))
  return (
    <Section
      title={t('billing.invoices')}
      actions={
        <>
          <Button
            small
            disabled={!list.length}
            onClick={() => downloadCsv(`invoices-${tenantId}.csv`, invoiceCsv, sorted.flatMap((invoice) => invoice.lines.map((line) => ({ invoice, line }))))}
          >
            {t('common.downloadCsv')}
          </Button>
          <Button small disabled={!list.length} onClick={() => downloadJson(`invoices-${tenantId}.json`, sorted)}>
            {t('common.downloadJson')}
          </Button>
        </>
      }
    >
      {invoices.isPending ? (
        <Loading />
      ) : invoices.isError ? (
        <ErrorNotice error={invoices.error} onRetry={() => void invoices.refetch()} />
      ) : sorted.length === 0 ? (
        <p className="muted">{t('billing.noInvoices')}</p>
      ) : (
        sorted.map((invoice) => (
          <details key={invoice.id} className="invoice">
            <summary>
              <strong>{invoice.period}</strong> · {money(invoice.total_usd)} · <code>{invoice.id}</code> · {dateTime(invoice.created_at)}
            </summary>
            <DataTable
              caption={t('billing.invoiceLines', { id: invoice.id })}
              columns={lineColumns(i18n)}
              rows={invoice.lines}
              rowKey={(line) => line.model}
              footer={
                <tr>
                  <td colSpan={5}>{t('billing.invoiceTotal')}</td>
                  <td className="num">{money(invoice.total_usd)}</td>
                </tr>
              }
            />
          </details>
        ))
      )}
    </Section>
  )
}

const ledgerCsv: CsvColumn<Transaction>[] = [
  { header: 'id', value: (row) => row.id },
  { header: 'created_at_ms', value: (row) => row.created_at_ms },
  { header: 'kind', value: (row) => row.kind },
  { header: 'balance_change_usd', value: balanceChange },
  { header: 'memo', value: (row) => row.memo },
  { header: 'request_id', value: (row) => row.request_id },
]

function Ledger({ tenantId, i18n }: { tenantId: string; i18n: I18n }) {
  const { t, money, dateTime } = i18n
  const ledger = useLedger(tenantId)
  const [filter, setFilter] = useState<'all' | 'credit'>('all')
  const rows = filter === 'all' ? ledger.items : ledger.items.filter((row) => CREDIT_KINDS.includes(row.kind))
  const columns: Column<Transaction>[] = [
    { key: 'when', header: t('billing.when'), nowrap: true, cell: (row) => dateTime(Math.floor(row.created_at_ms / 1000)) },
    { key: 'kind', header: t('billing.kind'), cell: (row) => t(`billing.kind.${row.kind}` as MessageKey) },
    { key: 'change', header: t('billing.change'), numeric: true, cell: (row) => money(balanceChange(row)) },
    { key: 'memo', header: t('billing.memo'), cell: (row) => row.memo ?? '' },
    { key: 'request', header: t('billing.request'), cell: (row) => (row.request_id ? <code>{row.request_id}</code> : '') },
  ]
  return (
    <Section
      title={t('billing.ledger')}
      actions={
        <>
          <Button small disabled={!rows.length} onClick={() => downloadCsv(`ledger-${tenantId}.csv`, ledgerCsv, rows)}>
            {t('common.downloadCsv')}
          </Button>
          <Button small disabled={!rows.length} onClick={() => downloadJson(`ledger-${tenantId}.json`, rows)}>
            {t('common.downloadJson')}
          </Button>
        </>
      }
    >
      <p className="muted">
        {t('billing.ledgerNote')} {t('common.downloadLoaded')}
      </p>
      <SelectField
        label={t('billing.filter')}
        value={filter}
        onChange={(event) => setFilter(event.target.value as 'all' | 'credit')}
        options={[
          { value: 'all', label: t('billing.filterAll') },
          { value: 'credit', label: t('billing.filterCredit') },
        ]}
      />
      {ledger.query.isPending ? (
        <Loading />
      ) : ledger.query.isError ? (
        <ErrorNotice error={ledger.query.error} onRetry={() => void ledger.query.refetch()} />
      ) : (
        <>
          <DataTable caption={t('billing.ledger')} hideCaption columns={columns} rows={rows} rowKey={(row) => row.id} />
          <LoadMore shown={ledger.items.length} hasMore={ledger.hasMore} loading={ledger.loadingMore} onLoadMore={ledger.loadMore} />
        </>
      )}
    </Section>
  )
}

export function BillingView({ tenantId }: { tenantId: string }) {
  const i18n = useI18n()
  return (
    <>
      <Invoices tenantId={tenantId} i18n={i18n} />
      <Ledger tenantId={tenantId} i18n={i18n} />
    </>
  )
}
