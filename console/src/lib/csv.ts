// CSV made in the browser from rows already fetched (RFC 4180: CRLF, quoted when needed).

export interface CsvColumn<Row> {
  header: string
  value: (row: Row) => string | number | boolean | null | undefined
}

const NEEDS_QUOTES = /[",\r\n]/
// A cell a spreadsheet would run as a formula; a plain (negative) number is left alone.
const FORMULA = /^[=+\-@\t\r]/
const NUMBER = /^-?\d+(\.\d+)?$/

function cell(value: string | number | boolean | null | undefined): string {
  if (value === null || value === undefined) return ''
  let text = String(value)
  if (FORMULA.test(text) && !NUMBER.test(text)) text = `'${text}`
  return NEEDS_QUOTES.test(text) ? `"${text.replace(/"/g, '""')}"` : text
}

export function toCsv<Row>(columns: CsvColumn<Row>[], rows: readonly Row[]): string {
  const lines = [columns.map((column) => cell(column.header)).join(',')]
  for (const row of rows) lines.push(columns.map((column) => cell(column.value(row))).join(','))
  return `${lines.join('\r\n')}\r\n`
}

/** Hands `content` to the browser as a file download; nothing leaves the machine. */
export function download(filename: string, content: string, type: string): void {
  const url = URL.createObjectURL(new Blob([content], { type }))
  const link = document.createElement('a')
  link.href = url
  link.download = filename
  document.body.append(link)
  link.click()
  link.remove()
  setTimeout(() => URL.revokeObjectURL(url), 0)
}

export function downloadCsv<Row>(filename: string, columns: CsvColumn<Row>[], rows: readonly Row[]): void {
  download(filename, toCsv(columns, rows), 'text/csv;charset=utf-8')
}

export function downloadJson(filename: string, value: unknown): void {
  download(filename, `${JSON.stringify(value, null, 2)}\n`, 'application/json')
}
