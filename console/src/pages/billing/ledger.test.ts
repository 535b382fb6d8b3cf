import { describe, expect, it } from 'vitest'
import type { Transaction } from '../../api/types'
import { balanceChange } from './ledger'

const transaction = (kind: Transaction['kind'], entries: [string, string][]): Transaction => ({
  id: 'txn_1',
  kind,
  tenant_id: 't',
  request_id: null,
  memo: null,
  entries: entries.map(([account, amount_usd]) => ({ account, amount_usd })),
  created_at_ms: 0,
})

describe('balanceChange', () => {
  it('is what moved in or out of the tenant’s credit', () => {
    expect(balanceChange(transaction('top_up', [['external:funding', '-10.00'], ['tenant:t:available', '10.00']]))).toBe('10.00')
    expect(balanceChange(transaction('hold', [['tenant:t:available', '-0.5'], ['tenant:t:held', '0.5']]))).toBe('0.00')
    expect(
      balanceChange(
        transaction('settle', [
          ['tenant:t:held', '-0.5'],
          ['tenant:t:available', '0.499999877'],
          ['tenant:t:revenue', '0.000000123'],
        ]),
      ),
    ).toBe('-0.000000123')
  })
})
