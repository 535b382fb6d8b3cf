import { useState, type FormEvent } from 'react'
import { Button } from '../../components/Button'
import { TextField } from '../../components/Field'
import { useI18n } from '../../i18n'
import { addDays, dayStart, isDay, monthStart, todayUtc } from '../../lib/dates'
import type { Range } from './queries'

export const MOST_DAYS = 366

export function lastDays(days: number): Range {
  const to = todayUtc()
  return { from: addDays(to, -(days - 1)), to }
}

export function RangePicker({ range, onChange }: { range: Range; onChange: (range: Range) => void }) {
  const { t } = useI18n()
  const [from, setFrom] = useState(range.from)
  const [to, setTo] = useState(range.to)
  const [error, setError] = useState<string | null>(null)

  const choose = (next: Range) => {
    setFrom(next.from)
    setTo(next.to)
    setError(null)
    onChange(next)
  }
  const submit = (event: FormEvent) => {
    event.preventDefault()
    if (!isDay(from) || !isDay(to)) return setError(t('form.invalidDate'))
    if (dayStart(to) < dayStart(from)) return setError(t('usage.rangeInvalid'))
    if ((dayStart(to) - dayStart(from)) / 86_400 + 1 > MOST_DAYS) return setError(t('usage.rangeTooLong', { days: MOST_DAYS }))
    choose({ from, to })
  }
  const today = todayUtc()
  return (
    <form className="section" onSubmit={submit} aria-label={t('usage.range')}>
      <div className="inline-form">
        <TextField label={t('common.from')} type="date" value={from} max={today} onChange={(event) => setFrom(event.target.value)} required />
        <TextField label={t('common.to')} type="date" value={to} max={today} onChange={(event) => setTo(event.target.value)} required />
        <Button type="submit" variant="primary">
          {t('usage.apply')}
        </Button>
        <Button onClick={() => choose(lastDays(7))}>{t('usage.last7')}</Button>
        <Button onClick={() => choose(lastDays(30))}>{t('usage.last30')}</Button>
        <Button onClick={() => choose({ from: monthStart(today), to: today })}>{t('usage.thisMonth')}</Button>
      </div>
      {error ? (
        <p role="alert" className="field-error">
          {error}
        </p>
      ) : null}
      <p className="hint muted">{t('usage.utcNote')}</p>
    </form>
  )
}
