import { describe, expect, it } from 'vitest'
import { draftOf, emptyPolicy, policyOf } from './PolicyFields'

describe('policy drafts', () => {
  it('turn into limits and budgets', () => {
    expect(policyOf({ ...emptyPolicy, rpm: '60', day: '5', month: '100.5', monthEnforcement: 'soft' })).toEqual({
      limits: { rpm: 60 },
      budgets: [
        { period: 'day', amount_usd: '5', enforcement: 'hard' },
        { period: 'month', amount_usd: '100.5', enforcement: 'soft' },
      ],
      errors: {},
    })
  })

  it('say what is wrong', () => {
    expect(policyOf({ ...emptyPolicy, rpm: '0', tpm: '1.5', day: '-1', month: '1e3' }).errors).toEqual({
      rpm: 'form.invalidWhole',
      tpm: 'form.invalidWhole',
      day: 'form.invalidMoney',
      month: 'form.invalidMoney',
    })
  })

  it('round-trip what the server has', () => {
    const limits = { rpm: 10, tpm: 1000 }
    const budgets = [{ period: 'month' as const, amount_usd: '20.00', enforcement: 'soft' as const }]
    const draft = draftOf(limits, budgets)
    expect(policyOf(draft)).toEqual({ limits, budgets, errors: {} })
  })
})
