// Money from the API is a decimal string of USD ("12.50", "0.000001234", "-3.2"). It is never
// turned into a float: formatting works on the digits, arithmetic on BigInt nanodollars.

const DECIMAL = /^(-)?(\d+)(?:\.(\d+))?$/
const NANO_DIGITS = 9

interface Parts {
  negative: boolean
  whole: string
  fraction: string
}

function split(amount: string): Parts | null {
  const match = DECIMAL.exec(amount.trim())
  if (!match) return null
  const whole = (match[2] ?? '0').replace(/^0+(?=\d)/, '')
  const fraction = match[3] ?? ''
  const isZero = /^0+$/.test(whole) && /^0*$/.test(fraction)
  return { negative: match[1] === '-' && !isZero, whole, fraction }
}

/** At least two fraction digits; zeros past the second are dropped, nonzero digits never. */
function shownFraction(fraction: string): string {
  const trimmed = fraction.replace(/0+$/, '')
  return trimmed.length >= 2 ? trimmed : trimmed.padEnd(2, '0')
}

const formatters = new Map<string, Intl.NumberFormat>()

function formatter(locale: string, currency: boolean): Intl.NumberFormat {
  const id = `${locale}|${currency}`
  let found = formatters.get(id)
  if (!found) {
    found = new Intl.NumberFormat(locale, {
      ...(currency ? { style: 'currency', currency: 'USD' } : {}),
      minimumFractionDigits: 2,
      maximumFractionDigits: 2,
    })
    formatters.set(id, found)
  }
  return found
}

/**
 * Formats a decimal USD string for `locale`: the integer grouped by Intl (on a BigInt), the
 * locale's decimal separator, and every significant fraction digit. With `currency` the
 * locale's USD sign is placed where the locale puts it. Text that is not a decimal is
 * returned as it is.
 */
export function formatMoney(amount: string, locale: string, currency = true): string {
  const parts = split(amount)
  if (!parts) return amount
  const whole = BigInt(parts.whole)
  // Formatting -0n loses the sign: format -1 and put the zero back.
  const sample = parts.negative ? (whole === 0n ? -1n : -whole) : whole
  const fraction = shownFraction(parts.fraction)
  return formatter(locale, currency)
    .formatToParts(sample)
    .map((part) => {
      if (part.type === 'fraction') return fraction
      if (part.type === 'integer' && parts.negative && whole === 0n) return '0'
      return part.value
    })
    .join('')
}

/** The amount in nanodollars, exactly; null for text that is not a decimal of at most 9 places. */
export function toNanos(amount: string): bigint | null {
  const parts = split(amount)
  if (!parts || parts.fraction.length > NANO_DIGITS) return null
  const nanos = BigInt(parts.whole) * 1_000_000_000n + BigInt(parts.fraction.padEnd(NANO_DIGITS, '0'))
  return parts.negative ? -nanos : nanos
}

/** Nanodollars as the API's decimal string: at least two decimals, no trailing zeros past them. */
export function fromNanos(nanos: bigint): string {
  const negative = nanos < 0n
  const magnitude = negative ? -nanos : nanos
  const whole = magnitude / 1_000_000_000n
  const fraction = (magnitude % 1_000_000_000n).toString().padStart(NANO_DIGITS, '0')
  return `${negative ? '-' : ''}${whole}.${shownFraction(fraction)}`
}

/** The exact sum of decimal strings (text that is not a decimal counts as zero). */
export function sumMoney(amounts: Iterable<string>): string {
  let total = 0n
  for (const amount of amounts) total += toNanos(amount) ?? 0n
  return fromNanos(total)
}

/** Whether `text` is an amount the API accepts: a decimal of at most 9 places. */
export function isMoney(text: string, options: { signed?: boolean } = {}): boolean {
  const trimmed = text.trim()
  if (!options.signed && trimmed.startsWith('-')) return false
  return toNanos(trimmed) !== null
}

/** `spent / cap` in percent, rounded down, exactly; null when the cap is zero or malformed. */
export function percentOf(spent: string, cap: string): number | null {
  const spentNanos = toNanos(spent)
  const capNanos = toNanos(cap)
  if (spentNanos === null || capNanos === null || capNanos <= 0n) return null
  return Number((spentNanos * 100n) / capNanos)
}

/**
 * The amount as a float, for drawing only (chart heights and axes): every figure shown as
 * text goes through `formatMoney` instead.
 */
export function moneyForChart(amount: string): number {
  const nanos = toNanos(amount)
  return nanos === null ? 0 : Number(nanos) / 1e9
}
