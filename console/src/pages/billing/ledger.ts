import type { Transaction } from '../../api/types'
import { fromNanos, toNanos } from '../../lib/money'

/** What a transaction did to the tenant's balance (available plus held), exactly. */
export function balanceChange(transaction: Transaction): string {
  const own = [`tenant:${transaction.tenant_id}:available`, `tenant:${transaction.tenant_id}:held`]
  let nanos = 0n
  for (const entry of transaction.entries) if (own.includes(entry.account)) nanos += toNanos(entry.amount_usd) ?? 0n
  return fromNanos(nanos)
}

export const CREDIT_KINDS: readonly string[] = ['top_up', 'refund', 'adjustment']
