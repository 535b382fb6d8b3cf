// The operator's tenants: searched and paged on the server, created here.

import { useEffect, useState, type FormEvent } from 'react'
import type { Tenant } from '../../api/types'
import { Button } from '../../components/Button'
import { DataTable, type Column } from '../../components/DataTable'
import { Dialog, DialogActions } from '../../components/Dialog'
import { Checkbox, SelectField, TextField } from '../../components/Field'
import { LoadMore } from '../../components/LoadMore'
import { Page, Section } from '../../components/Page'
import { ErrorNotice, Loading } from '../../components/Status'
import { useI18n } from '../../i18n'
import { Link, navigate } from '../../lib/router'
import { useCreateTenant, useTenants } from './queries'

function useDebounced(value: string, ms: number): string {
  const [settled, setSettled] = useState(value)
  useEffect(() => {
    const timer = setTimeout(() => setSettled(value), ms)
    return () => clearTimeout(timer)
  }, [value, ms])
  return settled
}

function CreateTenantForm({ onClose }: { onClose: () => void }) {
  const { t } = useI18n()
  const create = useCreateTenant()
  const [name, setName] = useState('')
  const [billing, setBilling] = useState<'prepaid' | 'postpaid'>('prepaid')
  const [logPrompts, setLogPrompts] = useState(false)
  const [missing, setMissing] = useState(false)
  const submit = (event: FormEvent) => {
    event.preventDefault()
    if (!name.trim()) return setMissing(true)
    create.mutate(
      { name: name.trim(), billing, log_prompts: logPrompts },
      {
        onSuccess: (tenant) => {
          onClose()
          navigate(`/tenants/${encodeURIComponent(tenant.id)}`)
        },
      },
    )
  }
  return (
    <form onSubmit={submit} noValidate>
      <TextField label={t('tenants.name')} value={name} onChange={(event) => setName(event.target.value)} error={missing ? t('form.required') : undefined} required maxLength={200} autoComplete="off" />
      <SelectField
        label={t('tenants.billing')}
        value={billing}
        onChange={(event) => setBilling(event.target.value as typeof billing)}
        options={[
          { value: 'prepaid', label: t('tenants.billing.prepaid') },
          { value: 'postpaid', label: t('tenants.billing.postpaid') },
        ]}
      />
      <Checkbox label={t('tenants.logPrompts')} hint={t('tenants.logPromptsHint')} checked={logPrompts} onChange={(event) => setLogPrompts(event.target.checked)} />
      {create.isError ? <ErrorNotice error={create.error} /> : null}
      <DialogActions>
        <Button onClick={onClose}>{t('common.cancel')}</Button>
        <Button type="submit" variant="primary" busy={create.isPending}>
          {t('tenants.createSubmit')}
        </Button>
      </DialogActions>
    </form>
  )
}

export default function TenantsPage() {
  const { t, dateTime } = useI18n()
  const [search, setSearch] = useState('')
  const query = useDebounced(search.trim(), 250)
  const tenants = useTenants(query)
  const [creating, setCreating] = useState(false)
  const columns: Column<Tenant>[] = [
    {
      key: 'name',
      header: t('common.name'),
      rowHeader: true,
      cell: (tenant) => <Link to={`/tenants/${encodeURIComponent(tenant.id)}`}>{tenant.name}</Link>,
    },
    { key: 'id', header: t('common.id'), cell: (tenant) => <code>{tenant.id}</code> },
    { key: 'billing', header: t('tenants.billing'), cell: (tenant) => t(tenant.billing === 'postpaid' ? 'tenants.billing.postpaid' : 'tenants.billing.prepaid') },
    { key: 'created', header: t('common.created'), nowrap: true, cell: (tenant) => dateTime(tenant.created_at) },
  ]
  return (
    <Page
      title={t('tenants.title')}
      actions={
        <Button variant="primary" onClick={() => setCreating(true)}>
          {t('tenants.create')}
        </Button>
      }
    >
      <Section title={t('tenants.list')}>
        <form role="search" onSubmit={(event) => event.preventDefault()}>
          <TextField label={t('tenants.search')} hint={t('tenants.searchHint')} type="search" value={search} onChange={(event) => setSearch(event.target.value)} autoComplete="off" />
        </form>
        {tenants.query.isPending ? (
          <Loading />
        ) : tenants.query.isError ? (
          <ErrorNotice error={tenants.query.error} onRetry={() => void tenants.query.refetch()} />
        ) : (
          <>
            <DataTable caption={t('tenants.list')} hideCaption columns={columns} rows={tenants.items} rowKey={(tenant) => tenant.id} />
            <LoadMore shown={tenants.items.length} hasMore={tenants.hasMore} loading={tenants.loadingMore} onLoadMore={tenants.loadMore} />
          </>
        )}
      </Section>
      <Dialog open={creating} onClose={() => setCreating(false)} title={t('tenants.create')}>
        <CreateTenantForm onClose={() => setCreating(false)} />
      </Dialog>
    </Page>
  )
}
