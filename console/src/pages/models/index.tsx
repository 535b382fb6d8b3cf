// The operator's models: each with its deployments and the price in effect now; register one.

import { useState, type FormEvent } from 'react'
import type { ModelView } from '../../api/types'
import { Button } from '../../components/Button'
import { DataTable, type Column } from '../../components/DataTable'
import { Dialog, DialogActions } from '../../components/Dialog'
import { TextField } from '../../components/Field'
import { Page, Section } from '../../components/Page'
import { ErrorNotice, Loading } from '../../components/Status'
import { useI18n } from '../../i18n'
import { Link, navigate } from '../../lib/router'
import { emptyPrice, PriceFields, priceOf, type PriceDraft } from './PriceFields'
import { useModels, useRegisterModel } from './queries'

function RegisterForm({ onClose }: { onClose: () => void }) {
  const { t } = useI18n()
  const register = useRegisterModel()
  const [id, setId] = useState('')
  const [deployment, setDeployment] = useState('primary')
  const [url, setUrl] = useState('')
  const [upstreamModel, setUpstreamModel] = useState('')
  const [apiKey, setApiKey] = useState('')
  const [price, setPrice] = useState<PriceDraft>(emptyPrice)
  const [invalid, setInvalid] = useState<{ fields: string[]; price: (keyof PriceDraft)[] }>({ fields: [], price: [] })
  const submit = (event: FormEvent) => {
    event.preventDefault()
    const fields = Object.entries({ id, deployment, url, upstreamModel })
      .filter(([, value]) => !value.trim())
      .map(([name]) => name)
    const hasPrice = Object.values(price).some((value) => value.trim())
    const priced = hasPrice ? priceOf(price) : { price: null, invalid: [] }
    setInvalid({ fields, price: priced.invalid })
    if (fields.length || priced.invalid.length) return
    register.mutate(
      {
        id: id.trim(),
        deployments: [
          {
            id: deployment.trim(),
            weight: 1,
            upstream: { url: url.trim(), model: upstreamModel.trim(), ...(apiKey ? { api_key: apiKey } : {}) },
          },
        ],
        ...(priced.price ? { price: priced.price } : {}),
      },
      {
        onSuccess: (model) => {
          onClose()
          navigate(`/models/${encodeURIComponent(model.id)}`)
        },
      },
    )
  }
  const missing = (name: string) => (invalid.fields.includes(name) ? t('form.required') : undefined)
  return (
    <form onSubmit={submit} noValidate>
      <TextField label={t('models.id')} hint={t('models.idHint')} value={id} onChange={(event) => setId(event.target.value)} error={missing('id')} required autoComplete="off" />
      <div className="form-row">
        <TextField label={t('models.deploymentId')} value={deployment} onChange={(event) => setDeployment(event.target.value)} error={missing('deployment')} required autoComplete="off" />
        <TextField label={t('models.upstreamModel')} value={upstreamModel} onChange={(event) => setUpstreamModel(event.target.value)} error={missing('upstreamModel')} required autoComplete="off" />
      </div>
      <TextField label={t('models.upstreamUrl')} hint={t('models.upstreamUrlHint')} type="url" value={url} onChange={(event) => setUrl(event.target.value)} error={missing('url')} required autoComplete="off" />
      <TextField
        label={t('common.optional', { label: t('models.upstreamKey') })}
        hint={t('models.upstreamKeyHint')}
        type="password"
        value={apiKey}
        onChange={(event) => setApiKey(event.target.value)}
        autoComplete="off"
      />
      <fieldset>
        <legend>{t('models.prices')}</legend>
        <PriceFields draft={price} onChange={setPrice} invalid={invalid.price} />
      </fieldset>
      {register.isError ? <ErrorNotice error={register.error} /> : null}
      <DialogActions>
        <Button onClick={onClose}>{t('common.cancel')}</Button>
        <Button type="submit" variant="primary" busy={register.isPending}>
          {t('models.registerSubmit')}
        </Button>
      </DialogActions>
    </form>
  )
}

export default function ModelsPage() {
  const { t, money, number } = useI18n()
  const models = useModels()
  const [registering, setRegistering] = useState(false)
  const columns: Column<ModelView>[] = [
    { key: 'id', header: t('models.id'), rowHeader: true, cell: (model) => <Link to={`/models/${encodeURIComponent(model.id)}`}>{model.id}</Link> },
    {
      key: 'deployments',
      header: t('models.deployments'),
      cell: (model) => model.deployments.map((deployment) => `${deployment.id} (${deployment.weight ?? 1})`).join(', '),
    },
    {
      key: 'price',
      header: t('models.priceNow'),
      cell: (model) =>
        model.price
          ? t('models.priceLine', { input: money(model.price.input_per_mtok_usd), output: money(model.price.output_per_mtok_usd) })
          : t('models.noPrice'),
    },
    { key: 'max', header: t('models.maxOutput'), numeric: true, cell: (model) => number(model.max_output_tokens ?? 4096) },
  ]
  return (
    <Page
      title={t('models.title')}
      actions={
        <Button variant="primary" onClick={() => setRegistering(true)}>
          {t('models.register')}
        </Button>
      }
    >
      <Section title={t('models.list')}>
        {models.isPending ? (
          <Loading />
        ) : models.isError ? (
          <ErrorNotice error={models.error} onRetry={() => void models.refetch()} />
        ) : (
          <DataTable caption={t('models.list')} hideCaption columns={columns} rows={models.data.data} rowKey={(model) => model.id} />
        )}
      </Section>
      <Dialog open={registering} onClose={() => setRegistering(false)} title={t('models.register')}>
        <RegisterForm onClose={() => setRegistering(false)} />
      </Dialog>
    </Page>
  )
}
