import type { UsageRow } from '../../api/types'
import type { Column } from '../../components/DataTable'
import type { I18n } from '../../i18n'
import type { CsvColumn } from '../../lib/csv'
import { sumMoney } from '../../lib/money'

/** The totals every usage row has: calls, tokens by type, cost. */
export function totalsColumns({ t, number, money }: I18n): Column<UsageRow>[] {
  return [
    { key: 'requests', header: t('common.requests'), numeric: true, cell: (row) => number(row.requests) },
    { key: 'prompt', header: t('common.promptTokens'), numeric: true, cell: (row) => number(row.prompt_tokens) },
    { key: 'cached', header: t('common.cachedTokens'), numeric: true, cell: (row) => number(row.cached_tokens) },
    { key: 'completion', header: t('common.completionTokens'), numeric: true, cell: (row) => number(row.completion_tokens) },
    { key: 'cost', header: t('common.cost'), numeric: true, cell: (row) => money(row.cost_usd) },
  ]
}

export function totalsCsv(): CsvColumn<UsageRow>[] {
  return [
    { header: 'requests', value: (row) => row.requests },
    { header: 'prompt_tokens', value: (row) => row.prompt_tokens },
    { header: 'cached_tokens', value: (row) => row.cached_tokens },
    { header: 'completion_tokens', value: (row) => row.completion_tokens },
    { header: 'cost_usd', value: (row) => row.cost_usd },
  ]
}

/** The rows added up, exactly (money as BigInt nanodollars). */
export function sumRows(rows: readonly UsageRow[]): UsageRow {
  const add = (field: 'requests' | 'prompt_tokens' | 'cached_tokens' | 'completion_tokens') =>
    rows.reduce((sum, row) => sum + row[field], 0)
  return {
    requests: add('requests'),
    prompt_tokens: add('prompt_tokens'),
    cached_tokens: add('cached_tokens'),
    completion_tokens: add('completion_tokens'),
    cost_usd: sumMoney(rows.map((row) => row.cost_usd)),
  }
}

export function TotalsFooter({ rows, label, i18n, leading = 1 }: { rows: readonly UsageRow[]; label: string; i18n: I18n; leading?: number }) {
  const total = sumRows(rows)
  return (
    <tr>
      <td colSpan={leading}>{label}</td>
      {totalsColumns(i18n).map((column) => (
        <td key={column.key} className="num">
          {column.cell(total)}
        </td>
      ))}
    </tr>
  )
}
