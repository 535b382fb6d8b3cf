// The operator's health figures, read from `/metrics` every 5 s while the page is visible
// (TanStack Query pauses the polling in a hidden tab): requests and calls per second, error
// rates, the gateway's own overhead.

import { useQuery } from '@tanstack/react-query'
import { useEffect, useMemo, useRef, useState } from 'react'
import { DailyChart } from '../../components/Chart'
import { Figures, Page, Section } from '../../components/Page'
import { ErrorNotice, Loading } from '../../components/Status'
import { useI18n } from '../../i18n'
import { healthFigures, type HealthFigures, type Scrape } from '../../lib/metrics'
import { scrapeMetrics } from '../../lib/scrape'

const POLL_MS = 5_000
const KEEP = 60

interface Reading extends HealthFigures {
  atSeconds: number
}

export default function HealthPage() {
  const { t, number, percent, duration, dateTime, time } = useI18n()
  const metrics = useQuery({
    queryKey: ['metrics'],
    queryFn: ({ signal }) => scrapeMetrics(signal),
    refetchInterval: POLL_MS,
    refetchIntervalInBackground: false,
    staleTime: 0,
    gcTime: 0,
  })
  const previous = useRef<Scrape | null>(null)
  const [readings, setReadings] = useState<Reading[]>([])

  useEffect(() => {
    const current = metrics.data
    if (!current || current === previous.current) return
    const before = previous.current
    previous.current = current
    if (!before) return
    const figures = healthFigures(before, current)
    setReadings((now) => [...now.slice(-(KEEP - 1)), { ...figures, atSeconds: Math.floor(current.atMs / 1000) }])
  }, [metrics.data])

  const latest = readings.at(-1)
  const chart = useMemo(
    () =>
      [readings.map((one) => one.atSeconds), readings.map((one) => one.requestsPerSecond), readings.map((one) => one.callsPerSecond)] as [
        number[],
        number[],
        number[],
      ],
    [readings],
  )
  const series = useMemo(
    () => [{ label: t('health.requests'), format: (value: number) => number(value, { maximumFractionDigits: 1 }) }, { label: t('health.calls') }],
    [t, number],
  )
  const rate = (value: number) => t('health.perSecond', { value: number(value, { maximumFractionDigits: 2 }) })
  const ms = (seconds: number | null) => (seconds === null ? '—' : duration(seconds * 1000))
  return (
    <Page title={t('health.title')}>
      <p className="muted">{t('health.note')}</p>
      {metrics.isError ? <ErrorNotice error={metrics.error} onRetry={() => void metrics.refetch()} /> : null}
      {metrics.isPending ? (
        <Loading />
      ) : !latest ? (
        <p role="status" className="muted">
          {t('health.waiting')}
        </p>
      ) : (
        <>
          <Figures
            items={[
              { label: t('health.requests'), value: rate(latest.requestsPerSecond) },
              { label: t('health.calls'), value: rate(latest.callsPerSecond) },
              { label: t('health.serverErrors'), value: percent(latest.serverErrorRate) },
              { label: t('health.clientErrors'), value: percent(latest.clientErrorRate) },
              { label: t('health.overhead'), value: ms(latest.overheadMeanSeconds) },
              { label: t('health.overheadP95'), value: ms(latest.overheadP95Seconds) },
              { label: t('health.inFlight'), value: number(latest.callsInFlight) },
            ]}
          />
          <Section title={t('health.history')}>
            <DailyChart
              title={t('health.history')}
              formatX={time}
              data={chart}
              series={series}
              tableRows={[...readings].reverse()}
              rowKey={(row) => String(row.atSeconds)}
              tableColumns={[
                { key: 'time', header: t('health.time'), rowHeader: true, cell: (row) => dateTime(row.atSeconds) },
                { key: 'requests', header: t('health.requests'), numeric: true, cell: (row) => rate(row.requestsPerSecond) },
                { key: 'calls', header: t('health.calls'), numeric: true, cell: (row) => rate(row.callsPerSecond) },
                { key: 'errors', header: t('health.serverErrors'), numeric: true, cell: (row) => percent(row.serverErrorRate) },
                { key: 'overhead', header: t('health.overhead'), numeric: true, cell: (row) => ms(row.overheadMeanSeconds) },
              ]}
            />
          </Section>
        </>
      )}
    </Page>
  )
}
