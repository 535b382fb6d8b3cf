// Usage rows into the column arrays uPlot draws: x is each UTC day's start in unix seconds,
// every day of the range present (a day without calls is a zero, not a gap).

import { dayStart, daysBetween } from './dates'

export interface DailyRow {
  day?: string | null
}

export type Series = [xs: number[], ...ys: number[][]]

/**
 * One series per field: the sum of that field over the rows of each day from `from` to `to`
 * (rows grouped by day and something else add up). `value` turns a row's field into a number.
 */
export function dailySeries<Row extends DailyRow>(
  rows: readonly Row[],
  from: string,
  to: string,
  fields: readonly ((row: Row) => number)[],
): Series {
  const days = daysBetween(from, to)
  const index = new Map(days.map((day, at) => [day, at]))
  const ys = fields.map(() => new Array<number>(days.length).fill(0))
  for (const row of rows) {
    const at = row.day ? index.get(row.day) : undefined
    if (at === undefined) continue
    fields.forEach((value, field) => {
      const ysOfField = ys[field]
      if (ysOfField) ysOfField[at] = (ysOfField[at] ?? 0) + value(row)
    })
  }
  return [days.map(dayStart), ...ys]
}
