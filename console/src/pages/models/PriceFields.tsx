import type { Price } from '../../api/types'
import { TextField } from '../../components/Field'
import { useI18n, type MessageKey } from '../../i18n'
import { isMoney } from '../../lib/money'

export interface PriceDraft {
  input: string
  cachedInput: string
  output: string
  perCall: string
  cacheHit: string
}

export const emptyPrice: PriceDraft = { input: '', cachedInput: '', output: '', perCall: '', cacheHit: '' }

const REQUIRED = ['input', 'output'] as const

/** The price a draft says, or which fields are wrong. */
export function priceOf(draft: PriceDraft): { price: Price | null; invalid: (keyof PriceDraft)[] } {
  const invalid = (Object.keys(draft) as (keyof PriceDraft)[]).filter((field) => {
    const text = draft[field].trim()
    if (!text) return (REQUIRED as readonly string[]).includes(field)
    return !isMoney(text)
  })
  if (invalid.length) return { price: null, invalid }
  const optional = (text: string) => (text.trim() ? text.trim() : undefined)
  const price: Price = { input_per_mtok_usd: draft.input.trim(), output_per_mtok_usd: draft.output.trim() }
  const cached = optional(draft.cachedInput)
  const perCall = optional(draft.perCall)
  const cacheHit = optional(draft.cacheHit)
  if (cached) price.cached_input_per_mtok_usd = cached
  if (perCall) price.per_call_usd = perCall
  if (cacheHit) price.cache_hit_usd = cacheHit
  return { price, invalid: [] }
}

const LABELS: Record<keyof PriceDraft, MessageKey> = {
  input: 'models.input',
  cachedInput: 'models.cachedInput',
  output: 'models.output',
  perCall: 'models.perCall',
  cacheHit: 'models.cacheHit',
}

export function PriceFields({ draft, onChange, invalid }: { draft: PriceDraft; onChange: (draft: PriceDraft) => void; invalid: readonly (keyof PriceDraft)[] }) {
  const { t } = useI18n()
  return (
    <div className="form-row">
      {(Object.keys(LABELS) as (keyof PriceDraft)[]).map((field) => (
        <TextField
          key={field}
          label={(REQUIRED as readonly string[]).includes(field) ? t(LABELS[field]) : t('common.optional', { label: t(LABELS[field]) })}
          inputMode="decimal"
          value={draft[field]}
          onChange={(event) => onChange({ ...draft, [field]: event.target.value })}
          error={invalid.includes(field) ? t('form.invalidMoney') : undefined}
          required={(REQUIRED as readonly string[]).includes(field)}
          autoComplete="off"
        />
      ))}
    </div>
  )
}
