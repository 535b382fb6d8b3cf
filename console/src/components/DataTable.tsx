// A real table: a caption, column headers with scope, numbers aligned right. Wide tables
// scroll in a box the keyboard can reach.

import { useId, type ReactNode } from 'react'
import { useI18n } from '../i18n'

export interface Column<Row> {
  key: string
  header: ReactNode
  cell: (row: Row) => ReactNode
  numeric?: boolean
  /** The row's header cell (`<th scope="row">`). */
  rowHeader?: boolean
  /** Keep the cell on one line (times, ids). */
  nowrap?: boolean
}

export interface DataTableProps<Row> {
  caption: ReactNode
  columns: readonly Column<Row>[]
  rows: readonly Row[]
  rowKey: (row: Row, index: number) => string
  footer?: ReactNode
  empty?: ReactNode
  hideCaption?: boolean
}

function classOf<Row>(column: Column<Row>): string | undefined {
  return [column.numeric ? 'num' : '', column.nowrap ? 'nowrap' : ''].filter(Boolean).join(' ') || undefined
}

export function DataTable<Row>({ caption, columns, rows, rowKey, footer, empty, hideCaption }: DataTableProps<Row>) {
  const { t } = useI18n()
  const captionId = useId()
  return (
    <div className="table-wrap" role="group" aria-labelledby={captionId} tabIndex={0}>
      <table>
        <caption id={captionId} className={hideCaption ? 'visually-hidden' : undefined}>
          {caption}
        </caption>
        <thead>
          <tr>
            {columns.map((column) => (
              <th key={column.key} scope="col" className={classOf(column)}>
                {column.header}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.length === 0 ? (
            <tr>
              <td colSpan={columns.length} className="empty">
                {empty ?? t('common.empty')}
              </td>
            </tr>
          ) : (
            rows.map((row, index) => (
              <tr key={rowKey(row, index)}>
                {columns.map((column) =>
                  column.rowHeader ? (
                    <th key={column.key} scope="row" className={classOf(column)}>
                      {column.cell(row)}
                    </th>
                  ) : (
                    <td key={column.key} className={classOf(column)}>
                      {column.cell(row)}
                    </td>
                  ),
                )}
              </tr>
            ))
          )}
        </tbody>
        {footer ? <tfoot>{footer}</tfoot> : null}
      </table>
    </div>
  )
}
