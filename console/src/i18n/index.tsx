// The console's languages: typed dictionaries (English is the reference; every other language
// must have every key, or the build fails) and Intl formatting in the chosen locale.

import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from 'react'
import { formatMoney } from '../lib/money'
import { en } from './en'
import { zhCN } from './zh-CN'

export type MessageKey = keyof typeof en
export type Locale = 'en' | 'zh-CN'
export type Params = Record<string, string | number>

export const LOCALES: readonly Locale[] = ['en', 'zh-CN']
const dictionaries: Record<Locale, Record<MessageKey, string>> = { en, 'zh-CN': zhCN }
/** Only the preference is stored: never a key, a token or anything the server owns. */
const STORED = 'ferry.locale'

/** The stored choice if any, else the first of the browser's languages that we have. */
export function detectLocale(languages: readonly string[], stored: string | null): Locale {
  if (stored && (LOCALES as readonly string[]).includes(stored)) return stored as Locale
  for (const language of languages) {
    const lower = language.toLowerCase()
    if (lower === 'zh' || lower.startsWith('zh-cn') || lower.startsWith('zh-hans') || lower === 'zh-sg') return 'zh-CN'
    if (lower.startsWith('en')) return 'en'
  }
  return 'en'
}

export function translate(locale: Locale, key: MessageKey, params?: Params): string {
  const text = dictionaries[locale][key]
  if (!params) return text
  return text.replace(/\{(\w+)\}/g, (whole, name: string) => (name in params ? String(params[name]) : whole))
}

function storedLocale(): string | null {
  try {
    return window.localStorage.getItem(STORED)
  } catch {
    return null
  }
}

export interface I18n {
  locale: Locale
  setLocale: (locale: Locale) => void
  t: (key: MessageKey, params?: Params) => string
  /** A decimal USD string, exactly, with the locale's currency sign. */
  money: (amount: string | null | undefined) => string
  number: (value: number | null | undefined, options?: Intl.NumberFormatOptions) => string
  percent: (ratio: number | null | undefined) => string
  /** A unix second as a date and time in the browser's zone. */
  dateTime: (unixSeconds: number | null | undefined) => string
  /** A unix second as a date in the browser's zone. */
  date: (unixSeconds: number | null | undefined) => string
  /** A unix second as a time of day in the browser's zone. */
  time: (unixSeconds: number) => string
  /** A UTC calendar date (`YYYY-MM-DD`) as the locale writes it. */
  day: (day: string) => string
  /** The same, short: month and day (chart axes). */
  dayShort: (day: string) => string
  /** A UTC month (`YYYY-MM`) as the locale writes it. */
  month: (month: string) => string
  /** Milliseconds, as `1,234 ms` or `2.5 s`. */
  duration: (ms: number | null | undefined) => string
}

function makeI18n(locale: Locale, setLocale: (locale: Locale) => void): I18n {
  const intl = locale === 'en' ? 'en-US' : locale
  const dateTime = new Intl.DateTimeFormat(intl, { dateStyle: 'medium', timeStyle: 'short' })
  const date = new Intl.DateTimeFormat(intl, { dateStyle: 'medium' })
  const time = new Intl.DateTimeFormat(intl, { timeStyle: 'medium' })
  const day = new Intl.DateTimeFormat(intl, { dateStyle: 'medium', timeZone: 'UTC' })
  const dayShort = new Intl.DateTimeFormat(intl, { month: 'short', day: 'numeric', timeZone: 'UTC' })
  const month = new Intl.DateTimeFormat(intl, { year: 'numeric', month: 'long', timeZone: 'UTC' })
  const percent = new Intl.NumberFormat(intl, { style: 'percent', maximumFractionDigits: 1 })
  const plain = new Intl.NumberFormat(intl)
  const dash = '—'
  return {
    locale,
    setLocale,
    t: (key, params) => translate(locale, key, params),
    money: (amount) => (amount == null ? dash : formatMoney(amount, intl)),
    number: (value, options) =>
      value == null || Number.isNaN(value) ? dash : options ? new Intl.NumberFormat(intl, options).format(value) : plain.format(value),
    percent: (ratio) => (ratio == null || Number.isNaN(ratio) ? dash : percent.format(ratio)),
    dateTime: (seconds) => (seconds == null ? dash : dateTime.format(new Date(seconds * 1000))),
    date: (seconds) => (seconds == null ? dash : date.format(new Date(seconds * 1000))),
    time: (seconds) => time.format(new Date(seconds * 1000)),
    day: (text) => {
      const parsed = Date.parse(`${text}T00:00:00Z`)
      return Number.isNaN(parsed) ? text : day.format(new Date(parsed))
    },
    dayShort: (text) => {
      const parsed = Date.parse(`${text}T00:00:00Z`)
      return Number.isNaN(parsed) ? text : dayShort.format(new Date(parsed))
    },
    month: (text) => {
      const parsed = Date.parse(`${text}-01T00:00:00Z`)
      return /^\d{4}-\d{2}$/.test(text) && !Number.isNaN(parsed) ? month.format(new Date(parsed)) : text
    },
    duration: (ms) => {
      if (ms == null || Number.isNaN(ms)) return dash
      if (ms < 1000) return `${new Intl.NumberFormat(intl, { maximumFractionDigits: ms < 10 ? 2 : 0 }).format(ms)} ms`
      return `${new Intl.NumberFormat(intl, { maximumFractionDigits: 2 }).format(ms / 1000)} s`
    },
  }
}

const I18nContext = createContext<I18n>(makeI18n('en', () => {}))

export function I18nProvider({ children, initial }: { children: ReactNode; initial?: Locale }) {
  const [locale, setLocaleState] = useState<Locale>(
    () => initial ?? detectLocale(typeof navigator === 'undefined' ? [] : navigator.languages, storedLocale()),
  )
  const setLocale = useCallback((next: Locale) => {
    setLocaleState(next)
    try {
      window.localStorage.setItem(STORED, next)
    } catch {
      // Private browsing: the choice lasts for this page only.
    }
  }, [])
  useEffect(() => {
    document.documentElement.lang = locale
  }, [locale])
  const value = useMemo(() => makeI18n(locale, setLocale), [locale, setLocale])
  return <I18nContext.Provider value={value}>{children}</I18nContext.Provider>
}

export function useI18n(): I18n {
  return useContext(I18nContext)
}
