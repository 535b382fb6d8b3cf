// Spend by key over one UTC month, dearest first, a page at a time (`/usage/keys`): quick
// however many keys the tenant has, where a report grouped by key over a free period is not.
// For tenant admins and operators; a member's page shows its own key's usage only.

import { useState } from 'react'
import type { KeySpend } from '../../api/types'
import { Button } from '../../components/Button'
import { DataTable, type Column } from '../../components/DataTable'
import { TextField } from '../../components/Field'
import { LoadMore } from '../../components/LoadMore'
import { Section } from '../../components/Page'
import { ErrorNotice, Loading } from '../../components/Status'
import type { I18n } from '../../i18n'
import { downloadCsv, type CsvColumn } from '../../lib/csv'
import { isMonth, thisMonthUtc } from '../../lib/dates'
import { totalsColumns, totalsCsv } from './columns'
import { useKeySpend } from './queries'

export interface KeySpendProps {
  tenantId: string
  /** The key the rest of the page is narrowed to, if any. */
  chosen: string | null
  onChoose: (row: KeySpend) => void
  i18n: I18n
}

export function KeySpendSection({ tenantId, chosen, onChoose, i18n }: KeySpendProps) {
  const { t } = i18n
  const latest = thisMonthUtc()
  const [month, setMonth] = useState(latest)
  const [draft, setDraft] = useState(latest)
  const spend = useKeySpend(tenantId, month)
  const title = t('usage.byKey')
  const columns: Column<KeySpend>[] = [
    { key: 'key', header: t('common.key'), rowHeader: true, cell: (row) => (row.key_id ? <code>{row.key_id}</code> : t('usage.noKey')) },
    ...totalsColumns(i18n),
    {
      key: 'only',
      header: t('common.actions'),
      cell: (row) =>
        row.key_id ? (
          <Button small disabled={chosen === row.key_id} onClick={() => onChoose(row)} aria-label={t('usage.onlyThisKeyOf', { key: row.key_id })}>
            {t('usage.onlyThisKey')}
          </Button>
        ) : null,
    },
  ]
  const csv: CsvColumn<KeySpend>[] = [{ header: 'month', value: () => month }, { header: 'key_id', value: (row) => row.key_id }, ...totalsCsv()]
  const invalid = draft !== '' && !isMonth(draft)
  return (
    <Section
      title={title}
      actions={
        <Button small disabled={!spend.items.length} onClick={() => downloadCsv(`usage-by-key-${month}.csv`, csv, spend.items)}>
          {t('common.downloadCsv')}
        </Button>
      }
    >
      <div className="inline-form">
        <TextField
          label={t('usage.month')}
          type="month"
          value={draft}
          max={latest}
          placeholder="YYYY-MM"
          pattern="\d{4}-\d{2}"
          error={invalid ? t('usage.monthInvalid') : undefined}
          onChange={(event) => {
            const value = event.target.value
            setDraft(value)
            if (isMonth(value)) setMonth(value)
          }}
        />
      </div>
      <p className="muted">
        {t('usage.byKeyNote', { month: i18n.month(month) })} {t('common.downloadLoaded')}
      </p>
      {spend.query.isPending ? (
        <Loading />
      ) : spend.query.isError ? (
        <ErrorNotice error={spend.query.error} onRetry={() => void spend.query.refetch()} />
      ) : (
        <>
          <DataTable
            caption={t('usage.byKeyIn', { month: i18n.month(month) })}
            hideCaption
            columns={columns}
            rows={spend.items}
            rowKey={(row) => row.key_id ?? '(none)'}
            empty={t('usage.noSpend')}
          />
          <LoadMore shown={spend.items.length} hasMore={spend.hasMore} loading={spend.loadingMore} onLoadMore={spend.loadMore} />
        </>
      )}
    </Section>
  )
}
