// A tenant's keys a page at a time; create one (its secret shown once), revoke one (after
// saying so in a confirmation dialog).

import { useState } from 'react'
import type { KeyView, Session } from '../../api/types'
import { Button } from '../../components/Button'
import { DataTable, type Column } from '../../components/DataTable'
import { Dialog, DialogActions } from '../../components/Dialog'
import { LoadMore } from '../../components/LoadMore'
import { Section } from '../../components/Page'
import { Badge, ErrorNotice, Loading, Notice } from '../../components/Status'
import { useI18n, type I18n, type MessageKey } from '../../i18n'
import { CreateKeyDialog } from './CreateKeyDialog'
import { useKeys, useRevokeKey } from './queries'

function statusOf(key: KeyView, now: number): 'revoked' | 'expired' | 'live' {
  if (key.revoked_at != null) return 'revoked'
  if (key.expires_at != null && key.expires_at <= now) return 'expired'
  return 'live'
}

function limitsText(key: KeyView, { t, number }: I18n): string {
  const parts = [
    key.limits?.rpm != null ? t('keys.rpmShort', { value: number(key.limits.rpm) }) : null,
    key.limits?.tpm != null ? t('keys.tpmShort', { value: number(key.limits.tpm) }) : null,
  ].filter(Boolean)
  return parts.length ? parts.join(' · ') : t('common.unlimited')
}

function RevokeDialog({ tenantId, target, onClose, onRevoked }: { tenantId: string; target: KeyView | null; onClose: () => void; onRevoked: (key: KeyView) => void }) {
  const { t } = useI18n()
  const revoke = useRevokeKey(tenantId)
  return (
    <Dialog open={target !== null} onClose={onClose} title={t('keys.revokeTitle')}>
      {target ? (
        <>
          <p>{t('keys.revokeBody', { name: target.name, id: target.id })}</p>
          {revoke.isError ? <ErrorNotice error={revoke.error} /> : null}
          <DialogActions>
            <Button onClick={onClose}>{t('common.cancel')}</Button>
            <Button
              variant="danger"
              busy={revoke.isPending}
              onClick={() =>
                revoke.mutate(target.id, {
                  onSuccess: () => {
                    onRevoked(target)
                    onClose()
                  },
                })
              }
            >
              {t('keys.revokeConfirm')}
            </Button>
          </DialogActions>
        </>
      ) : null}
    </Dialog>
  )
}

export function KeysView({ tenantId, session }: { tenantId: string; session: Session }) {
  const i18n = useI18n()
  const { t, dateTime, money } = i18n
  const keys = useKeys(tenantId)
  const [creating, setCreating] = useState(false)
  const [revoking, setRevoking] = useState<KeyView | null>(null)
  const [revoked, setRevoked] = useState<string | null>(null)
  const [now] = useState(() => Math.floor(Date.now() / 1000))
  const columns: Column<KeyView>[] = [
    { key: 'name', header: t('common.name'), rowHeader: true, cell: (key) => key.name },
    { key: 'id', header: t('common.id'), cell: (key) => <code>{key.id}</code> },
    { key: 'role', header: t('keys.role'), cell: (key) => t(`role.${key.role}` as MessageKey) },
    {
      key: 'models',
      header: t('keys.models'),
      cell: (key) => (key.models?.length ? key.models.map((model) => <code key={model}>{model} </code>) : t('keys.allModels')),
    },
    { key: 'limits', header: t('keys.limits'), cell: (key) => limitsText(key, i18n) },
    { key: 'cap', header: t('keys.creditCap'), numeric: true, cell: (key) => (key.credit_cap_usd ? money(key.credit_cap_usd) : t('common.none')) },
    { key: 'created', header: t('common.created'), nowrap: true, cell: (key) => dateTime(key.created_at) },
    { key: 'expires', header: t('keys.expires'), nowrap: true, cell: (key) => (key.expires_at ? dateTime(key.expires_at) : t('keys.never')) },
    {
      key: 'status',
      header: t('common.status'),
      cell: (key) => {
        const status = statusOf(key, now)
        return <Badge tone={status === 'live' ? 'ok' : 'danger'}>{t(`keys.${status}`)}</Badge>
      },
    },
    {
      key: 'actions',
      header: t('common.actions'),
      cell: (key) =>
        statusOf(key, now) === 'revoked' || key.id === session.key_id ? null : (
          <Button small variant="danger" onClick={() => setRevoking(key)} aria-label={`${t('keys.revoke')}: ${key.name}`}>
            {t('keys.revoke')}
          </Button>
        ),
    },
  ]
  return (
    <>
      <Section
        title={t('keys.list')}
        actions={
          <Button variant="primary" onClick={() => setCreating(true)}>
            {t('keys.create')}
          </Button>
        }
      >
        {revoked ? <Notice tone="ok">{t('keys.revokeDone', { name: revoked })}</Notice> : null}
        {keys.query.isPending ? (
          <Loading />
        ) : keys.query.isError ? (
          <ErrorNotice error={keys.query.error} onRetry={() => void keys.query.refetch()} />
        ) : (
          <>
            <DataTable caption={t('keys.list')} hideCaption columns={columns} rows={keys.items} rowKey={(key) => key.id} />
            <LoadMore shown={keys.items.length} hasMore={keys.hasMore} loading={keys.loadingMore} onLoadMore={keys.loadMore} />
          </>
        )}
      </Section>
      <CreateKeyDialog tenantId={tenantId} session={session} open={creating} onClose={() => setCreating(false)} />
      <RevokeDialog tenantId={tenantId} target={revoking} onClose={() => setRevoking(null)} onRevoked={(key) => setRevoked(key.name)} />
    </>
  )
}
