import { describe, expect, it } from 'vitest'
import { dailySeries } from './chartData'
import { addDays, daysBetween, isDay, monthStart, todayUtc, utcDay } from './dates'
import { moneyForChart } from './money'

interface Row {
  day?: string
  model?: string
  prompt_tokens: number
  completion_tokens: number
  cost_usd: string
}

const row = (day: string, prompt: number, completion: number, cost: string, model?: string): Row => ({
  day,
  model,
  prompt_tokens: prompt,
  completion_tokens: completion,
  cost_usd: cost,
})

describe('dailySeries', () => {
  it('fills the days without usage with zero', () => {
    const series = dailySeries(
      [row('2026-02-27', 10, 1, '0.5'), row('2026-03-02', 30, 3, '1.25')],
      '2026-02-27',
      '2026-03-02',
      [(r) => r.prompt_tokens, (r) => moneyForChart(r.cost_usd)],
    )
    expect(series[0]).toEqual([
      Date.UTC(2026, 1, 27) / 1000,
      Date.UTC(2026, 1, 28) / 1000,
      Date.UTC(2026, 2, 1) / 1000,
      Date.UTC(2026, 2, 2) / 1000,
    ])
    expect(series[1]).toEqual([10, 0, 0, 30])
    expect(series[2]).toEqual([0.5, 0, 0, 1.25])
  })

  it('adds up rows of one day grouped by something else, and drops rows outside the range', () => {
    const series = dailySeries(
      [row('2026-01-01', 1, 0, '0', 'a'), row('2026-01-01', 2, 0, '0', 'b'), row('2025-12-31', 100, 0, '0')],
      '2026-01-01',
      '2026-01-02',
      [(r) => r.prompt_tokens],
    )
    expect(series).toEqual([[Date.UTC(2026, 0, 1) / 1000, Date.UTC(2026, 0, 2) / 1000], [3, 0]])
  })

  it('is empty for an inverted range', () => {
    expect(dailySeries([], '2026-01-02', '2026-01-01', [() => 1])).toEqual([[], []])
  })
})

describe('dates', () => {
  it('works in UTC days', () => {
    expect(utcDay(0)).toBe('1970-01-01')
    expect(addDays('2024-02-28', 1)).toBe('2024-02-29')
    expect(addDays('2024-03-01', -1)).toBe('2024-02-29')
    expect(monthStart('2024-02-29')).toBe('2024-02-01')
    expect(daysBetween('2024-12-30', '2025-01-02')).toEqual(['2024-12-30', '2024-12-31', '2025-01-01', '2025-01-02'])
    expect(todayUtc(new Date(Date.UTC(2026, 4, 5, 23, 59)))).toBe('2026-05-05')
    expect(isDay('2026-02-30')).toBe(false)
    expect(isDay('2026-02-28')).toBe(true)
  })
})
