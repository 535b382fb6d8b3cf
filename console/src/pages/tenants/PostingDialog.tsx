// Top-up, refund or adjustment of a tenant's credit. Each opening of the dialog makes a new
// idempotency key, so a double click or a retry after a lost answer posts once.

import { useState, type FormEvent } from 'react'
import { Button } from '../../components/Button'
import { Dialog, DialogActions } from '../../components/Dialog'
import { TextField } from '../../components/Field'
import { ErrorNotice } from '../../components/Status'
import { useI18n } from '../../i18n'
import { isMoney } from '../../lib/money'
import { usePosting, type PostingKind } from './queries'

/** A fresh idempotency key: random, so no two dialogs share one. */
export function newIdempotencyKey(): string {
  if (typeof crypto.randomUUID === 'function') return `console-${crypto.randomUUID()}`
  const bytes = crypto.getRandomValues(new Uint8Array(16))
  return `console-${Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('')}`
}

function PostingForm({ tenantId, kind, onClose, onPosted }: { tenantId: string; kind: PostingKind; onClose: () => void; onPosted: (message: string) => void }) {
  const { t, money } = useI18n()
  const posting = usePosting(tenantId, kind)
  const [idempotencyKey] = useState(newIdempotencyKey)
  const [amount, setAmount] = useState('')
  const [memo, setMemo] = useState('')
  const [errors, setErrors] = useState<{ amount?: string; memo?: string }>({})
  const signed = kind === 'adjustment'

  const submit = (event: FormEvent) => {
    event.preventDefault()
    const found = {
      ...(isMoney(amount, { signed }) && !/^-?0*(\.0*)?$/.test(amount.trim())
        ? {}
        : { amount: t(signed ? 'form.invalidSignedMoney' : 'form.invalidMoney') }),
      ...(signed && !memo.trim() ? { memo: t('tenants.memoRequired') } : {}),
    }
    setErrors(found)
    if (Object.keys(found).length) return
    posting.mutate(
      { amount_usd: amount.trim(), idempotency_key: idempotencyKey, ...(memo.trim() ? { memo: memo.trim() } : {}) },
      {
        onSuccess: (posted) => {
          onPosted(t(posted.replayed ? 'tenants.replayed' : 'tenants.posted', { balance: money(posted.balance_usd) }))
          onClose()
        },
      },
    )
  }
  return (
    <form onSubmit={submit} noValidate>
      <TextField
        label={t('tenants.amount')}
        hint={signed ? t('tenants.amountAdjustHint') : undefined}
        inputMode="decimal"
        value={amount}
        onChange={(event) => setAmount(event.target.value)}
        error={errors.amount}
        required
        autoComplete="off"
      />
      <TextField
        label={signed ? t('tenants.memo') : t('common.optional', { label: t('tenants.memo') })}
        hint={t('tenants.memoHint')}
        value={memo}
        onChange={(event) => setMemo(event.target.value)}
        error={errors.memo}
        required={signed}
        autoComplete="off"
      />
      <TextField label={t('tenants.idempotency')} hint={t('tenants.idempotencyHint')} value={idempotencyKey} readOnly className="mono" />
      {posting.isError ? <ErrorNotice error={posting.error} /> : null}
      <DialogActions>
        <Button onClick={onClose}>{t('common.cancel')}</Button>
        <Button type="submit" variant="primary" busy={posting.isPending}>
          {t('tenants.post')}
        </Button>
      </DialogActions>
    </form>
  )
}

export function PostingDialog({ tenantId, kind, onClose, onPosted }: { tenantId: string; kind: PostingKind | null; onClose: () => void; onPosted: (message: string) => void }) {
  const { t } = useI18n()
  return (
    <Dialog open={kind !== null} onClose={onClose} title={kind ? t(`tenants.posting.${kind}`) : ''}>
      {kind ? <PostingForm tenantId={tenantId} kind={kind} onClose={onClose} onPosted={onPosted} /> : null}
    </Dialog>
  )
}
