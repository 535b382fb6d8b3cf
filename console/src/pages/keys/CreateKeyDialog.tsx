// The create-key form, and the one time the new secret is shown.

import { useState, type FormEvent } from 'react'
import type { CreateKey, Session } from '../../api/types'
import { Button } from '../../components/Button'
import { CopyButton } from '../../components/CopyButton'
import { Dialog, DialogActions } from '../../components/Dialog'
import { Checkbox, SelectField, TextField } from '../../components/Field'
import { emptyPolicy, PolicyFields, policyOf, type PolicyDraft, type PolicyErrors } from '../../components/PolicyFields'
import { ErrorNotice, Loading } from '../../components/Status'
import { useI18n } from '../../i18n'
import { addDays, dayStart, isDay, todayUtc } from '../../lib/dates'
import { isMoney } from '../../lib/money'
import { useCallableModels, useCreateKey } from './queries'

interface Created {
  name: string
  secret: string
}

function CreateKeyForm({ tenantId, session, onCreated, onCancel }: { tenantId: string; session: Session; onCreated: (created: Created) => void; onCancel: () => void }) {
  const { t } = useI18n()
  const models = useCallableModels()
  const create = useCreateKey(tenantId)
  const [name, setName] = useState('')
  const [role, setRole] = useState<'member' | 'tenant-admin'>('member')
  const [chosen, setChosen] = useState<string[]>([])
  const [expires, setExpires] = useState('')
  const [cap, setCap] = useState('')
  const [policy, setPolicy] = useState<PolicyDraft>(emptyPolicy)
  const [errors, setErrors] = useState<PolicyErrors & { name?: boolean; expires?: boolean; cap?: boolean }>({})

  const submit = (event: FormEvent) => {
    event.preventDefault()
    const { limits, budgets, errors: policyErrors } = policyOf(policy)
    const found = {
      ...policyErrors,
      ...(name.trim() ? {} : { name: true }),
      ...(expires && (!isDay(expires) || dayStart(expires) <= dayStart(todayUtc())) ? { expires: true } : {}),
      ...(cap.trim() && !isMoney(cap) ? { cap: true } : {}),
    }
    setErrors(found)
    if (Object.keys(found).length) return
    const body: CreateKey = {
      name: name.trim(),
      role,
      ...(chosen.length ? { models: chosen } : {}),
      ...(expires ? { expires_at: dayStart(expires) } : {}),
      ...(limits.rpm != null || limits.tpm != null ? { limits } : {}),
      ...(budgets.length ? { budgets } : {}),
      ...(cap.trim() ? { credit_cap_usd: cap.trim() } : {}),
    }
    create.mutate(body, {
      onSuccess: (view) => {
        const secret = view.key ?? ''
        create.reset()
        onCreated({ name: view.name, secret })
      },
    })
  }

  const toggle = (model: string, on: boolean) => setChosen((now) => (on ? [...now, model] : now.filter((one) => one !== model)))
  const roles = [
    { value: 'member', label: t('role.member') },
    ...(session.role === 'member' ? [] : [{ value: 'tenant-admin', label: t('role.tenant-admin') }]),
  ]
  return (
    <form onSubmit={submit} noValidate>
      <TextField
        label={t('keys.name')}
        hint={t('keys.nameHint')}
        value={name}
        onChange={(event) => setName(event.target.value)}
        error={errors.name ? t('form.required') : undefined}
        required
        maxLength={200}
        autoComplete="off"
      />
      <SelectField label={t('keys.role')} value={role} onChange={(event) => setRole(event.target.value as typeof role)} options={roles} />
      <fieldset>
        <legend>{t('keys.modelsLegend')}</legend>
        <p className="hint muted">{t('keys.modelsHint')}</p>
        {models.isPending ? (
          <Loading />
        ) : models.isError ? (
          <ErrorNotice error={models.error} />
        ) : (
          models.data.data.map((model) => (
            <Checkbox key={model.id} label={<code>{model.id}</code>} checked={chosen.includes(model.id)} onChange={(event) => toggle(model.id, event.target.checked)} />
          ))
        )}
      </fieldset>
      <div className="form-row">
        <TextField
          label={t('common.optional', { label: t('keys.expiresAt') })}
          hint={t('keys.expiresHint')}
          type="date"
          min={addDays(todayUtc(), 1)}
          value={expires}
          onChange={(event) => setExpires(event.target.value)}
          error={errors.expires ? t('keys.expiryPast') : undefined}
        />
        <TextField
          label={t('common.optional', { label: t('keys.creditCap') })}
          hint={t('keys.creditCapHint')}
          inputMode="decimal"
          value={cap}
          onChange={(event) => setCap(event.target.value)}
          error={errors.cap ? t('form.invalidMoney') : undefined}
        />
      </div>
      <PolicyFields draft={policy} onChange={setPolicy} errors={errors} />
      {create.isError ? <ErrorNotice error={create.error} /> : null}
      <DialogActions>
        <Button onClick={onCancel}>{t('common.cancel')}</Button>
        <Button type="submit" variant="primary" busy={create.isPending}>
          {create.isPending ? t('keys.creating') : t('keys.createSubmit')}
        </Button>
      </DialogActions>
    </form>
  )
}

/** Shows the secret once; closing forgets it (it was never put anywhere else). */
function SecretView({ created, onDone }: { created: Created; onDone: () => void }) {
  const { t } = useI18n()
  return (
    <>
      <div role="alert" className="notice notice-warn">
        <p>{t('keys.secretWarning')}</p>
      </div>
      <p id="new-key-label">{t('keys.secretLabel', { name: created.name })}</p>
      <div className="secret">
        <output aria-labelledby="new-key-label" data-testid="new-key-secret">
          {created.secret}
        </output>
        <CopyButton text={created.secret} />
      </div>
      <DialogActions>
        <Button variant="primary" onClick={onDone}>
          {t('keys.secretDone')}
        </Button>
      </DialogActions>
    </>
  )
}

export function CreateKeyDialog({ tenantId, session, open, onClose }: { tenantId: string; session: Session; open: boolean; onClose: () => void }) {
  const { t } = useI18n()
  const [created, setCreated] = useState<Created | null>(null)
  const close = () => {
    setCreated(null)
    onClose()
  }
  return (
    <Dialog open={open} onClose={close} title={created ? t('keys.secretTitle') : t('keys.create')} dismissable={!created}>
      {created ? (
        <SecretView created={created} onDone={close} />
      ) : (
        <CreateKeyForm tenantId={tenantId} session={session} onCreated={setCreated} onCancel={close} />
      )}
    </Dialog>
  )
}
