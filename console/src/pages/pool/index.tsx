// The GPU pool, for operators: each deployment's replicas by state, the calls queued and in
// flight, its cold starts (from `/metrics`), and pre-warming before a known burst. A Ferry
// without a pool (`--no-local-models`: 404 `no_pool`) gets a plain note, not an error.

import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query'
import { useState, type FormEvent } from 'react'
import { api, unwrap } from '../../api/client'
import { isStatus } from '../../api/errors'
import type { PoolDeployment, PoolReplica, PoolStatus, ReplicaState } from '../../api/types'
import { Button } from '../../components/Button'
import { DataTable, type Column } from '../../components/DataTable'
import { Dialog, DialogActions } from '../../components/Dialog'
import { TextField } from '../../components/Field'
import { Page, Section } from '../../components/Page'
import { Badge, ErrorNotice, Loading, Notice } from '../../components/Status'
import { useI18n, type I18n, type MessageKey } from '../../i18n'
import { poolStarts, type PoolStarts } from '../../lib/metrics'
import { scrapeMetrics } from '../../lib/scrape'

const POLL_MS = 5_000
const STATES: readonly ReplicaState[] = ['ready', 'starting', 'draining', 'lost']
const TONES: Record<ReplicaState, 'ok' | 'warn' | 'danger' | undefined> = { ready: 'ok', starting: 'warn', draining: undefined, lost: 'danger' }
const MOST_REPLICAS = 1_000
const MOST_SECONDS = 7 * 86_400

function usePool() {
  return useQuery({
    queryKey: ['pool'],
    queryFn: ({ signal }) => unwrap(api.GET('/admin/v1/pool', { signal })),
    refetchInterval: (query) => (isStatus(query.state.error, 403, 404) ? false : POLL_MS),
    retry: (failures, error) => !isStatus(error, 403, 404) && failures < 2,
  })
}

/** Replica starts by deployment; nothing (not an error) where `/metrics` cannot be read. */
function usePoolStarts(enabled: boolean) {
  return useQuery({
    queryKey: ['pool', 'metrics'],
    queryFn: async ({ signal }) => poolStarts((await scrapeMetrics(signal)).samples),
    refetchInterval: POLL_MS,
    retry: false,
    enabled,
  })
}

const stateLabel = (state: string, t: I18n['t']) => (STATES.includes(state as ReplicaState) ? t(`pool.state.${state}` as MessageKey) : state)

function replicasText(replicas: readonly PoolReplica[], { t, number }: I18n): string {
  if (!replicas.length) return t('pool.none')
  return STATES.map((state) => [state, replicas.filter((replica) => replica.state === state).length] as const)
    .filter(([, count]) => count > 0)
    .map(([state, count]) => `${number(count)} ${stateLabel(state, t)}`)
    .join(', ')
}

function meanColdStart(starts: PoolStarts | undefined, { duration }: I18n): string {
  if (!starts || starts.coldStarts <= 0) return '—'
  return duration((starts.coldStartSeconds / starts.coldStarts) * 1000)
}

function PrewarmForm({ deployment, onClose, onDone }: { deployment: string; onClose: () => void; onDone: (message: string) => void }) {
  const { t, number, duration } = useI18n()
  const client = useQueryClient()
  const [replicas, setReplicas] = useState('1')
  const [seconds, setSeconds] = useState('600')
  const [errors, setErrors] = useState<{ replicas?: boolean; seconds?: boolean }>({})
  const prewarm = useMutation({
    mutationFn: (body: { replicas: number; seconds: number }) =>
      unwrap(api.POST('/admin/v1/pool/{deployment}/prewarm', { params: { path: { deployment } }, body })),
    onSuccess: () => void client.invalidateQueries({ queryKey: ['pool'] }),
  })
  const whole = (text: string, most: number) => (/^\d+$/.test(text.trim()) && Number(text) >= 1 && Number(text) <= most ? Number(text) : null)
  const submit = (event: FormEvent) => {
    event.preventDefault()
    const count = whole(replicas, MOST_REPLICAS)
    const time = whole(seconds, MOST_SECONDS)
    setErrors({ ...(count === null ? { replicas: true } : {}), ...(time === null ? { seconds: true } : {}) })
    if (count === null || time === null) return
    prewarm.mutate(
      { replicas: count, seconds: time },
      {
        onSuccess: () => {
          onDone(t('pool.prewarmed', { deployment, replicas: number(count), time: duration(time * 1000) }))
          onClose()
        },
      },
    )
  }
  return (
    <form onSubmit={submit} noValidate>
      <p className="muted">{t('pool.prewarmIntro')}</p>
      <TextField
        label={t('pool.prewarmReplicas')}
        inputMode="numeric"
        value={replicas}
        onChange={(event) => setReplicas(event.target.value)}
        error={errors.replicas ? t('pool.prewarmReplicasInvalid', { most: number(MOST_REPLICAS) }) : undefined}
        required
        autoComplete="off"
      />
      <TextField
        label={t('pool.prewarmSeconds')}
        hint={t('pool.prewarmSecondsHint')}
        inputMode="numeric"
        value={seconds}
        onChange={(event) => setSeconds(event.target.value)}
        error={errors.seconds ? t('pool.prewarmSecondsInvalid', { most: number(MOST_SECONDS) }) : undefined}
        required
        autoComplete="off"
      />
      {prewarm.isError ? <ErrorNotice error={prewarm.error} /> : null}
      <DialogActions>
        <Button onClick={onClose}>{t('common.cancel')}</Button>
        <Button type="submit" variant="primary" busy={prewarm.isPending}>
          {t('pool.prewarm')}
        </Button>
      </DialogActions>
    </form>
  )
}

function Deployments({ status, starts, i18n }: { status: PoolStatus; starts: Map<string, PoolStarts> | undefined; i18n: I18n }) {
  const { t, number } = i18n
  const [warming, setWarming] = useState<string | null>(null)
  const [message, setMessage] = useState<string | null>(null)
  const columns: Column<PoolDeployment>[] = [
    { key: 'name', header: t('pool.deployment'), rowHeader: true, cell: (row) => <code>{row.name}</code> },
    { key: 'replicas', header: t('pool.replicas'), cell: (row) => replicasText(row.replicas, i18n) },
    { key: 'queued', header: t('pool.queue'), numeric: true, cell: (row) => number(row.queued) },
    { key: 'inflight', header: t('pool.inFlight'), numeric: true, cell: (row) => number(row.replicas.reduce((sum, replica) => sum + replica.in_flight, 0)) },
    { key: 'cold', header: t('pool.coldStarts'), numeric: true, cell: (row) => (starts ? number(starts.get(row.name)?.coldStarts ?? 0) : '—') },
    { key: 'coldTime', header: t('pool.coldStartMean'), numeric: true, cell: (row) => meanColdStart(starts?.get(row.name), i18n) },
    {
      key: 'actions',
      header: t('common.actions'),
      cell: (row) => (
        <Button small onClick={() => setWarming(row.name)} aria-label={t('pool.prewarmOf', { deployment: row.name })}>
          {t('pool.prewarm')}
        </Button>
      ),
    },
  ]
  return (
    <Section title={t('pool.deployments')}>
      {message ? <Notice tone="ok">{message}</Notice> : null}
      <DataTable caption={t('pool.deployments')} hideCaption columns={columns} rows={status.deployments} rowKey={(row) => row.name} empty={t('pool.noDeployments')} />
      <Dialog open={warming !== null} onClose={() => setWarming(null)} title={t('pool.prewarmTitle', { deployment: warming ?? '' })}>
        {warming ? <PrewarmForm deployment={warming} onClose={() => setWarming(null)} onDone={setMessage} /> : null}
      </Dialog>
    </Section>
  )
}

function Replicas({ deployment, i18n }: { deployment: PoolDeployment; i18n: I18n }) {
  const { t, number, percent } = i18n
  const title = t('pool.replicasOf', { deployment: deployment.name })
  const columns: Column<PoolReplica>[] = [
    { key: 'id', header: t('pool.replica'), rowHeader: true, numeric: true, cell: (row) => row.id },
    { key: 'state', header: t('common.status'), cell: (row) => <Badge tone={TONES[row.state]}>{stateLabel(row.state, t)}</Badge> },
    { key: 'url', header: t('pool.url'), cell: (row) => (row.url ? <code>{row.url}</code> : '—') },
    { key: 'inflight', header: t('pool.inFlight'), numeric: true, cell: (row) => number(row.in_flight) },
    { key: 'running', header: t('pool.running'), numeric: true, cell: (row) => number(row.load?.running) },
    { key: 'queued', header: t('pool.workerQueue'), numeric: true, cell: (row) => number(row.load?.queued) },
    { key: 'kv', header: t('pool.kvUse'), numeric: true, cell: (row) => percent(row.load?.kv_use) },
  ]
  return (
    <Section title={title}>
      <DataTable caption={title} hideCaption columns={columns} rows={deployment.replicas} rowKey={(row) => String(row.id)} empty={t('pool.noReplicas')} />
    </Section>
  )
}

export default function PoolPage() {
  const i18n = useI18n()
  const { t } = i18n
  const pool = usePool()
  const starts = usePoolStarts(pool.isSuccess)
  return (
    <Page title={t('pool.title')}>
      <p className="muted">{t('pool.refreshed')}</p>
      {pool.isPending ? (
        <Loading />
      ) : pool.isError ? (
        isStatus(pool.error, 404) ? (
          <Notice>{t('pool.unavailable')}</Notice>
        ) : (
          <ErrorNotice error={pool.error} onRetry={() => void pool.refetch()} />
        )
      ) : (
        <>
          <Deployments status={pool.data} starts={starts.data} i18n={i18n} />
          {pool.data.deployments.map((deployment) => (
            <Replicas key={deployment.name} deployment={deployment} i18n={i18n} />
          ))}
        </>
      )}
    </Page>
  )
}
