// One model: shift traffic between its deployments, change its route, see its prices over
// time and add one from now or a later moment.

import { useState, type FormEvent } from 'react'
import type { ModelView, PriceRecord, RoutePolicy } from '../../api/types'
import { Button } from '../../components/Button'
import { DataTable, type Column } from '../../components/DataTable'
import { Dialog, DialogActions } from '../../components/Dialog'
import { SelectField, TextField } from '../../components/Field'
import { Page, Section } from '../../components/Page'
import { ErrorNotice, Loading, Notice } from '../../components/Status'
import { useI18n } from '../../i18n'
import { Link, navigate } from '../../lib/router'
import { emptyPrice, PriceFields, priceOf, type PriceDraft } from './PriceFields'
import { useAddPrice, useDeleteModel, useModel, usePrices, useUpdateModel } from './queries'

const WHOLE = /^\d{1,9}$/

/** The server's defaults (`RoutePolicy::default`), for a model that has no route of its own. */
const DEFAULT_ROUTE: RoutePolicy = {
  fallbacks: [],
  retries: 2,
  try_timeout_ms: null,
  backoff_base_ms: 100,
  backoff_max_ms: 2000,
  breaker: { error_percent: 50, window_ms: 60_000, min_calls: 10, open_ms: 30_000, probes: 1 },
}

function Weights({ model }: { model: ModelView }) {
  const { t } = useI18n()
  const update = useUpdateModel(model.id)
  const [weights, setWeights] = useState<Record<string, string>>(() =>
    Object.fromEntries(model.deployments.map((deployment) => [deployment.id, String(deployment.weight ?? 1)])),
  )
  const [invalid, setInvalid] = useState<string[]>([])
  const submit = (event: FormEvent) => {
    event.preventDefault()
    const wrong = Object.entries(weights)
      .filter(([, value]) => !WHOLE.test(value.trim()))
      .map(([id]) => id)
    setInvalid(wrong)
    if (wrong.length) return
    update.mutate({ weights: Object.fromEntries(Object.entries(weights).map(([id, value]) => [id, Number(value)])) })
  }
  const columns: Column<ModelView['deployments'][number]>[] = [
    { key: 'id', header: t('models.deployment'), rowHeader: true, cell: (deployment) => <code>{deployment.id}</code> },
    { key: 'upstream', header: t('models.upstream'), cell: (deployment) => <code>{`${deployment.upstream.url} · ${deployment.upstream.model}`}</code> },
    {
      key: 'weight',
      header: t('models.weights'),
      cell: (deployment) => (
        <TextField
          label={t('models.weight', { deployment: deployment.id })}
          inputMode="numeric"
          value={weights[deployment.id] ?? ''}
          onChange={(event) => setWeights({ ...weights, [deployment.id]: event.target.value })}
          error={invalid.includes(deployment.id) ? t('form.invalidWhole') : undefined}
        />
      ),
    },
  ]
  return (
    <Section title={t('models.deployments')}>
      <form onSubmit={submit} noValidate>
        <p className="muted">{t('models.weightsHint')}</p>
        <DataTable caption={t('models.deployments')} hideCaption columns={columns} rows={model.deployments} rowKey={(deployment) => deployment.id} />
        {update.isError ? <ErrorNotice error={update.error} /> : null}
        {update.isSuccess ? <Notice tone="ok">{t('common.saved')}</Notice> : null}
        <Button type="submit" variant="primary" busy={update.isPending}>
          {t('models.saveWeights')}
        </Button>
      </form>
    </Section>
  )
}

function Route({ model }: { model: ModelView }) {
  const { t } = useI18n()
  const update = useUpdateModel(model.id)
  const route = model.route
  const [fallbacks, setFallbacks] = useState((route?.fallbacks ?? []).join(', '))
  const [retries, setRetries] = useState(String(route?.retries ?? 2))
  const [timeout, setTimeoutMs] = useState(route?.try_timeout_ms != null ? String(route.try_timeout_ms) : '')
  const [backoffBase, setBackoffBase] = useState(String(route?.backoff_base_ms ?? 100))
  const [backoffMax, setBackoffMax] = useState(String(route?.backoff_max_ms ?? 2000))
  const [invalid, setInvalid] = useState<string[]>([])
  const submit = (event: FormEvent) => {
    event.preventDefault()
    const numbers = { retries, backoffBase, backoffMax, ...(timeout.trim() ? { timeout } : {}) }
    const wrong = Object.entries(numbers)
      .filter(([, value]) => !WHOLE.test(value.trim()))
      .map(([name]) => name)
    setInvalid(wrong)
    if (wrong.length) return
    update.mutate({
      route: {
        ...(route ?? DEFAULT_ROUTE),
        fallbacks: fallbacks
          .split(',')
          .map((one) => one.trim())
          .filter(Boolean),
        retries: Number(retries),
        backoff_base_ms: Number(backoffBase),
        backoff_max_ms: Number(backoffMax),
        ...(timeout.trim() ? { try_timeout_ms: Number(timeout) } : { try_timeout_ms: null }),
      },
    })
  }
  const error = (name: string) => (invalid.includes(name) ? t('form.invalidWhole') : undefined)
  return (
    <Section title={t('models.route')}>
      <form onSubmit={submit} noValidate>
        <TextField label={t('models.fallbacks')} hint={t('models.fallbacksHint')} value={fallbacks} onChange={(event) => setFallbacks(event.target.value)} autoComplete="off" />
        <div className="form-row">
          <TextField label={t('models.retries')} inputMode="numeric" value={retries} onChange={(event) => setRetries(event.target.value)} error={error('retries')} />
          <TextField label={t('common.optional', { label: t('models.tryTimeout') })} inputMode="numeric" value={timeout} onChange={(event) => setTimeoutMs(event.target.value)} error={error('timeout')} />
          <TextField label={t('models.backoffBase')} inputMode="numeric" value={backoffBase} onChange={(event) => setBackoffBase(event.target.value)} error={error('backoffBase')} />
          <TextField label={t('models.backoffMax')} inputMode="numeric" value={backoffMax} onChange={(event) => setBackoffMax(event.target.value)} error={error('backoffMax')} />
        </div>
        {update.isError ? <ErrorNotice error={update.error} /> : null}
        {update.isSuccess ? <Notice tone="ok">{t('common.saved')}</Notice> : null}
        <Button type="submit" variant="primary" busy={update.isPending}>
          {t('models.saveRoute')}
        </Button>
      </form>
    </Section>
  )
}

/** `datetime-local` text (the browser's zone) as unix seconds; null when empty or not a time. */
export function localToUnix(text: string): number | null {
  if (!text) return null
  const ms = new Date(text).getTime()
  return Number.isNaN(ms) ? null : Math.floor(ms / 1000)
}

function Prices({ model }: { model: ModelView }) {
  const { t, money, dateTime } = useI18n()
  const prices = usePrices(model.id)
  const add = useAddPrice(model.id)
  const [draft, setDraft] = useState<PriceDraft>(emptyPrice)
  const [deployment, setDeployment] = useState('')
  const [effective, setEffective] = useState('')
  const [invalid, setInvalid] = useState<(keyof PriceDraft)[]>([])
  const [badTime, setBadTime] = useState(false)
  const submit = (event: FormEvent) => {
    event.preventDefault()
    const { price, invalid: wrong } = priceOf(draft)
    const from = localToUnix(effective)
    const pastTime = effective !== '' && (from === null || from < Math.floor(Date.now() / 1000) - 1)
    setInvalid(wrong)
    setBadTime(pastTime)
    if (!price || pastTime) return
    add.mutate(
      { price, ...(deployment ? { deployment } : {}), ...(from !== null ? { effective_from: from } : {}) },
      { onSuccess: () => setDraft(emptyPrice) },
    )
  }
  const optional = (value: string | null | undefined) => (value ? money(value) : '—')
  const columns: Column<PriceRecord>[] = [
    { key: 'from', header: t('models.effectiveFrom'), rowHeader: true, cell: (row) => dateTime(Math.floor(row.effective_from_ms / 1000)) },
    { key: 'deployment', header: t('models.deployment'), cell: (row) => (row.deployment ? <code>{row.deployment}</code> : t('models.wholeModel')) },
    { key: 'input', header: t('models.inputShort'), numeric: true, cell: (row) => money(row.price.input_per_mtok_usd) },
    { key: 'cached', header: t('models.cachedShort'), numeric: true, cell: (row) => optional(row.price.cached_input_per_mtok_usd) },
    { key: 'output', header: t('models.outputShort'), numeric: true, cell: (row) => money(row.price.output_per_mtok_usd) },
    { key: 'call', header: t('models.perCallShort'), numeric: true, cell: (row) => optional(row.price.per_call_usd) },
    { key: 'hit', header: t('models.cacheHitShort'), numeric: true, cell: (row) => optional(row.price.cache_hit_usd) },
  ]
  return (
    <Section title={t('models.prices')}>
      <p className="muted">{t('models.pricesNote')}</p>
      {prices.isPending ? (
        <Loading />
      ) : prices.isError ? (
        <ErrorNotice error={prices.error} onRetry={() => void prices.refetch()} />
      ) : (
        <DataTable
          caption={t('models.prices')}
          hideCaption
          columns={columns}
          rows={[...prices.data.data].reverse()}
          rowKey={(row) => `${row.deployment ?? ''}-${row.effective_from_ms}`}
        />
      )}
      <h3>{t('models.addPrice')}</h3>
      <form onSubmit={submit} noValidate>
        <div className="form-row">
          <SelectField
            label={t('models.deployment')}
            value={deployment}
            onChange={(event) => setDeployment(event.target.value)}
            options={[{ value: '', label: t('models.wholeModel') }, ...model.deployments.map((one) => ({ value: one.id, label: one.id }))]}
          />
          <TextField
            label={t('common.optional', { label: t('models.effectiveFrom') })}
            hint={t('models.effectiveHint')}
            type="datetime-local"
            value={effective}
            onChange={(event) => setEffective(event.target.value)}
            error={badTime ? t('models.effectiveHint') : undefined}
          />
        </div>
        <PriceFields draft={draft} onChange={setDraft} invalid={invalid} />
        {add.isError ? <ErrorNotice error={add.error} /> : null}
        {add.isSuccess ? <Notice tone="ok">{t('models.priceAdded')}</Notice> : null}
        <Button type="submit" variant="primary" busy={add.isPending}>
          {t('models.addPrice')}
        </Button>
      </form>
    </Section>
  )
}

function DeleteModel({ model }: { model: ModelView }) {
  const { t } = useI18n()
  const remove = useDeleteModel(model.id)
  const [open, setOpen] = useState(false)
  return (
    <>
      <Button variant="danger" onClick={() => setOpen(true)}>
        {t('models.delete')}
      </Button>
      <Dialog open={open} onClose={() => setOpen(false)} title={t('models.deleteTitle')}>
        <p>{t('models.deleteBody', { id: model.id })}</p>
        {remove.isError ? <ErrorNotice error={remove.error} /> : null}
        <DialogActions>
          <Button onClick={() => setOpen(false)}>{t('common.cancel')}</Button>
          <Button variant="danger" busy={remove.isPending} onClick={() => remove.mutate(undefined, { onSuccess: () => navigate('/models') })}>
            {t('models.delete')}
          </Button>
        </DialogActions>
      </Dialog>
    </>
  )
}

export default function ModelPage({ modelId }: { modelId: string }) {
  const { t } = useI18n()
  const model = useModel(modelId)
  return (
    <Page
      title={modelId}
      actions={
        <>
          <Link to="/models">{t('models.back')}</Link>
          {model.data ? <DeleteModel model={model.data} /> : null}
        </>
      }
    >
      {model.isPending ? (
        <Loading />
      ) : model.isError ? (
        <ErrorNotice error={model.error} onRetry={() => void model.refetch()} />
      ) : (
        <>
          <Weights key={`w-${model.data.id}`} model={model.data} />
          <Route key={`r-${model.data.id}`} model={model.data} />
          <Prices model={model.data} />
        </>
      )}
    </Page>
  )
}
