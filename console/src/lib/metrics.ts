// The operator's health figures from two scrapes of `/metrics` (OpenMetrics text): rates are
// differences between scrapes, so they cover the last polling interval.

export interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/gy

function unescape(value: string): string {
  return value.replace(/\\(.)/g, (_, char: string) => (char === 'n' ? '\n' : char))
}

function parseValue(text: string): number {
  if (text === '+Inf' || text === 'Inf') return Number.POSITIVE_INFINITY
  if (text === '-Inf') return Number.NEGATIVE_INFINITY
  return Number(text)
}

/** Every sample of an OpenMetrics (or Prometheus text) exposition; comments are skipped. */
export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = []
  for (const rawLine of text.split('\n')) {
    const line = rawLine.trim()
    if (!line || line.startsWith('#')) continue
    const match = SAMPLE.exec(line)
    if (!match) continue
    const labels: Record<string, string> = {}
    const labelText = match[3] ?? ''
    LABEL.lastIndex = 0
    for (let label = LABEL.exec(labelText); label; label = LABEL.exec(labelText)) {
      labels[label[1] ?? ''] = unescape(label[2] ?? '')
    }
    samples.push({ name: match[1] ?? '', labels, value: parseValue(match[4] ?? '') })
  }
  return samples
}

export interface Scrape {
  atMs: number
  samples: Sample[]
}

type Filter = (labels: Record<string, string>) => boolean

function total(samples: Sample[], name: string, filter: Filter = () => true): number {
  let sum = 0
  for (const sample of samples) if (sample.name === name && filter(sample.labels)) sum += sample.value
  return sum
}

/** How much a counter grew; a counter that went down was reset (a restart): all of it is new. */
function growth(previous: number, current: number): number {
  return current >= previous ? current - previous : current
}

function buckets(samples: Sample[], name: string): Map<number, number> {
  const byBound = new Map<number, number>()
  for (const sample of samples) {
    if (sample.name !== `${name}_bucket` || sample.labels.le === undefined) continue
    const bound = parseValue(sample.labels.le)
    byBound.set(bound, (byBound.get(bound) ?? 0) + sample.value)
  }
  return byBound
}

/** The upper bound of the bucket holding quantile `q` of what was observed between scrapes. */
function quantile(previous: Sample[], current: Sample[], name: string, q: number): number | null {
  const before = buckets(previous, name)
  const after = [...buckets(current, name)].sort(([left], [right]) => left - right)
  const counts = after.map(([bound, count]) => [bound, growth(before.get(bound) ?? 0, count)] as const)
  const all = counts.at(-1)?.[1] ?? 0
  if (all <= 0) return null
  const found = counts.find(([, count]) => count >= q * all)
  return found ? found[0] : null
}

export interface HealthFigures {
  /** HTTP requests per second, the console's own scrapes aside. */
  requestsPerSecond: number
  /** Model calls per second. */
  callsPerSecond: number
  /** Shares of the interval's HTTP requests that failed, server side (5xx) and caller side (4xx). */
  serverErrorRate: number | null
  clientErrorRate: number | null
  /** Mean and 95th percentile of a call's time in Ferry, in seconds. */
  overheadMeanSeconds: number | null
  overheadP95Seconds: number | null
  callsInFlight: number
}

const notScrape: Filter = (labels) => labels.route !== '/metrics'

export function healthFigures(previous: Scrape, current: Scrape): HealthFigures {
  const seconds = Math.max((current.atMs - previous.atMs) / 1000, 0.001)
  const requests = (filter: Filter) =>
    growth(
      total(previous.samples, 'ferry_http_requests_total', filter),
      total(current.samples, 'ferry_http_requests_total', filter),
    )
  const all = requests(notScrape)
  const withStatus = (status: string) => requests((labels) => notScrape(labels) && labels.status === status)
  const overhead = (suffix: string) =>
    growth(
      total(previous.samples, `ferry_gateway_overhead_seconds_${suffix}`),
      total(current.samples, `ferry_gateway_overhead_seconds_${suffix}`),
    )
  const overheadCount = overhead('count')
  return {
    requestsPerSecond: all / seconds,
    callsPerSecond:
      growth(total(previous.samples, 'ferry_requests_total'), total(current.samples, 'ferry_requests_total')) / seconds,
    serverErrorRate: all > 0 ? withStatus('5xx') / all : null,
    clientErrorRate: all > 0 ? withStatus('4xx') / all : null,
    overheadMeanSeconds: overheadCount > 0 ? overhead('sum') / overheadCount : null,
    overheadP95Seconds: quantile(previous.samples, current.samples, 'ferry_gateway_overhead_seconds', 0.95),
    callsInFlight: total(current.samples, 'ferry_calls_in_flight'),
  }
}

/** A pool deployment's replica starts so far (`ferry_pool_*` counters). */
export interface PoolStarts {
  /** Replicas that became ready. */
  starts: number
  /** Those that became ready while no other was: calls waited for them. */
  coldStarts: number
  /** The time the cold starts took, in all. */
  coldStartSeconds: number
}

/** Replica starts by deployment, from one scrape (counters: `_total` in OpenMetrics text). */
export function poolStarts(samples: readonly Sample[]): Map<string, PoolStarts> {
  const byDeployment = new Map<string, PoolStarts>()
  const fields: Record<string, keyof PoolStarts> = {
    ferry_pool_replica_starts: 'starts',
    ferry_pool_cold_starts: 'coldStarts',
    ferry_pool_cold_start_seconds: 'coldStartSeconds',
  }
  for (const sample of samples) {
    const field = fields[sample.name.replace(/_total$/, '')]
    const deployment = sample.labels.deployment
    if (!field || deployment === undefined) continue
    const starts = byDeployment.get(deployment) ?? { starts: 0, coldStarts: 0, coldStartSeconds: 0 }
    starts[field] += sample.value
    byDeployment.set(deployment, starts)
  }
  return byDeployment
}
