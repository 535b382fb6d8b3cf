// Days are UTC calendar dates (`YYYY-MM-DD`), as the usage report groups them; instants from
// the API are unix seconds or milliseconds, shown in the browser's time zone and locale.

const DAY_SECONDS = 86_400

function pad(value: number): string {
  return String(value).padStart(2, '0')
}

/** The UTC date of a unix second. */
export function utcDay(unixSeconds: number): string {
  const date = new Date(unixSeconds * 1000)
  return `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())}`
}

export function todayUtc(now: Date = new Date()): string {
  return utcDay(Math.floor(now.getTime() / 1000))
}

/** Unix seconds at the start of a UTC date; NaN for text that is not one. */
export function dayStart(day: string): number {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(day)
  if (!match) return Number.NaN
  return Date.UTC(Number(match[1]), Number(match[2]) - 1, Number(match[3])) / 1000
}

export function addDays(day: string, days: number): string {
  return utcDay(dayStart(day) + days * DAY_SECONDS)
}

export function monthStart(day: string): string {
  return `${day.slice(0, 7)}-01`
}

/** Every date from `from` to `to`, both included (none when `to` is before `from`). */
export function daysBetween(from: string, to: string, most = 3_700): string[] {
  const days: string[] = []
  const end = dayStart(to)
  for (let at = dayStart(from); at <= end && days.length < most; at += DAY_SECONDS) days.push(utcDay(at))
  return days
}

export function isDay(text: string): boolean {
  return !Number.isNaN(dayStart(text)) && utcDay(dayStart(text)) === text
}

/** The UTC month (`YYYY-MM`) of now. */
export function thisMonthUtc(now: Date = new Date()): string {
  return todayUtc(now).slice(0, 7)
}

/** A month as the API takes it: `YYYY-MM`. */
export function isMonth(text: string): boolean {
  const match = /^(\d{4})-(\d{2})$/.exec(text)
  return !!match && Number(match[1]) >= 1970 && Number(match[2]) >= 1 && Number(match[2]) <= 12
}
