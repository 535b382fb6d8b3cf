// Rate limits and budgets as form fields, for a key or a tenant: one budget per UTC day and
// one per month, each hard (refuse) or soft (alert).

import type { Budget, RateLimits } from '../api/types'
import { useI18n, type MessageKey } from '../i18n'
import { isMoney } from '../lib/money'
import { SelectField, TextField } from './Field'

export interface PolicyDraft {
  rpm: string
  tpm: string
  day: string
  dayEnforcement: 'hard' | 'soft'
  month: string
  monthEnforcement: 'hard' | 'soft'
}

export const emptyPolicy: PolicyDraft = { rpm: '', tpm: '', day: '', dayEnforcement: 'hard', month: '', monthEnforcement: 'hard' }

export function draftOf(limits: RateLimits | undefined, budgets: readonly Budget[] | undefined): PolicyDraft {
  const of = (period: 'day' | 'month') => budgets?.find((budget) => budget.period === period)
  return {
    rpm: limits?.rpm != null ? String(limits.rpm) : '',
    tpm: limits?.tpm != null ? String(limits.tpm) : '',
    day: of('day')?.amount_usd ?? '',
    dayEnforcement: of('day')?.enforcement ?? 'hard',
    month: of('month')?.amount_usd ?? '',
    monthEnforcement: of('month')?.enforcement ?? 'hard',
  }
}

export type PolicyErrors = Partial<Record<'rpm' | 'tpm' | 'day' | 'month', MessageKey>>

const WHOLE = /^[1-9]\d{0,9}$/

/** The limits and budgets a draft says, or what is wrong with it. */
export function policyOf(draft: PolicyDraft): { limits: RateLimits; budgets: Budget[]; errors: PolicyErrors } {
  const errors: PolicyErrors = {}
  const limits: RateLimits = {}
  for (const field of ['rpm', 'tpm'] as const) {
    const text = draft[field].trim()
    if (!text) continue
    if (WHOLE.test(text) && Number(text) <= 4_294_967_295) limits[field] = Number(text)
    else errors[field] = 'form.invalidWhole'
  }
  const budgets: Budget[] = []
  for (const period of ['day', 'month'] as const) {
    const text = draft[period].trim()
    if (!text) continue
    if (isMoney(text)) budgets.push({ period, amount_usd: text, enforcement: draft[`${period}Enforcement`] })
    else errors[period] = 'form.invalidMoney'
  }
  return { limits, budgets, errors }
}

export function PolicyFields({ draft, onChange, errors }: { draft: PolicyDraft; onChange: (draft: PolicyDraft) => void; errors: PolicyErrors }) {
  const { t } = useI18n()
  const set = (field: keyof PolicyDraft) => (event: { target: { value: string } }) => onChange({ ...draft, [field]: event.target.value })
  const enforcement = [
    { value: 'hard', label: t('budget.hard') },
    { value: 'soft', label: t('budget.soft') },
  ]
  const error = (field: keyof PolicyErrors) => (errors[field] ? t(errors[field]) : undefined)
  return (
    <>
      <fieldset>
        <legend>{t('limits.title')}</legend>
        <div className="form-row">
          <TextField label={t('common.optional', { label: t('limits.rpm') })} inputMode="numeric" value={draft.rpm} onChange={set('rpm')} error={error('rpm')} />
          <TextField label={t('common.optional', { label: t('limits.tpm') })} inputMode="numeric" value={draft.tpm} onChange={set('tpm')} error={error('tpm')} />
        </div>
      </fieldset>
      <fieldset>
        <legend>{t('budget.title')}</legend>
        <div className="form-row">
          <TextField label={t('common.optional', { label: t('budget.day') })} inputMode="decimal" value={draft.day} onChange={set('day')} error={error('day')} />
          <SelectField label={t('budget.enforcement')} value={draft.dayEnforcement} onChange={set('dayEnforcement')} options={enforcement} />
        </div>
        <div className="form-row">
          <TextField label={t('common.optional', { label: t('budget.month') })} inputMode="decimal" value={draft.month} onChange={set('month')} error={error('month')} />
          <SelectField label={t('budget.enforcement')} value={draft.monthEnforcement} onChange={set('monthEnforcement')} options={enforcement} />
        </div>
      </fieldset>
    </>
  )
}
