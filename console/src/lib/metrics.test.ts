import { describe, expect, it } from 'vitest'
import { healthFigures, parseMetrics, poolStarts } from './metrics'

const scrape = (requests: [string, string, number][], overhead: { sum: number; count: number; buckets: [string, number][] }, calls = 0) =>
  [
    '# HELP ferry_http_requests HTTP requests by route template, method and status class.',
    '# TYPE ferry_http_requests counter',
    ...requests.map(([route, status, value]) => `ferry_http_requests_total{route="${route}",method="GET",status="${status}"} ${value}`),
    '# TYPE ferry_requests counter',
    `ferry_requests_total{model="m",endpoint="chat.completions",status="2xx"} ${calls}`,
    '# TYPE ferry_gateway_overhead_seconds histogram',
    `ferry_gateway_overhead_seconds_sum{model="m",endpoint="chat.completions"} ${overhead.sum}`,
    `ferry_gateway_overhead_seconds_count{model="m",endpoint="chat.completions"} ${overhead.count}`,
    ...overhead.buckets.map(([le, value]) => `ferry_gateway_overhead_seconds_bucket{le="${le}",model="m",endpoint="chat.completions"} ${value}`),
    '# TYPE ferry_calls_in_flight gauge',
    'ferry_calls_in_flight 2',
    '# EOF',
  ].join('\n')

describe('parseMetrics', () => {
  it('reads names, labels with escapes, and special values', () => {
    const samples = parseMetrics('a_total{x="q\\"uote",y="b\\\\s"} 3\nb +Inf\n# comment\nc{le="+Inf"} 1 1700000000\n')
    expect(samples).toEqual([
      { name: 'a_total', labels: { x: 'q"uote', y: 'b\\s' }, value: 3 },
      { name: 'b', labels: {}, value: Number.POSITIVE_INFINITY },
      { name: 'c', labels: { le: '+Inf' }, value: 1 },
    ])
  })
})

describe('healthFigures', () => {
  it('turns two scrapes into rates over the interval', () => {
    const before = parseMetrics(
      scrape(
        [['/v1/chat/completions', '2xx', 10], ['/v1/chat/completions', '5xx', 0], ['/metrics', '2xx', 50]],
        { sum: 0.01, count: 10, buckets: [['0.001', 10], ['0.01', 10], ['+Inf', 10]] },
        10,
      ),
    )
    const after = parseMetrics(
      scrape(
        [['/v1/chat/completions', '2xx', 28], ['/v1/chat/completions', '5xx', 1], ['/v1/models', '4xx', 1], ['/metrics', '2xx', 51]],
        { sum: 0.03, count: 30, buckets: [['0.001', 28], ['0.01', 30], ['+Inf', 30]] },
        30,
      ),
    )
    const figures = healthFigures({ atMs: 0, samples: before }, { atMs: 5_000, samples: after })
    expect(figures.requestsPerSecond).toBeCloseTo(4)
    expect(figures.callsPerSecond).toBeCloseTo(4)
    expect(figures.serverErrorRate).toBeCloseTo(0.05)
    expect(figures.clientErrorRate).toBeCloseTo(0.05)
    expect(figures.overheadMeanSeconds).toBeCloseTo(0.001)
    expect(figures.overheadP95Seconds).toBe(0.01)
    expect(figures.callsInFlight).toBe(2)
  })

  it('has no rates without traffic, and survives a restart', () => {
    const busy = parseMetrics(scrape([['/v1/models', '2xx', 100]], { sum: 1, count: 100, buckets: [['+Inf', 100]] }))
    const restarted = parseMetrics(scrape([['/v1/models', '2xx', 3]], { sum: 0.003, count: 3, buckets: [['+Inf', 3]] }))
    const quiet = healthFigures({ atMs: 0, samples: busy }, { atMs: 1_000, samples: busy })
    expect(quiet.requestsPerSecond).toBe(0)
    expect(quiet.serverErrorRate).toBeNull()
    expect(quiet.overheadMeanSeconds).toBeNull()
    expect(healthFigures({ atMs: 0, samples: busy }, { atMs: 1_000, samples: restarted }).requestsPerSecond).toBe(3)
  })
})

describe('poolStarts', () => {
  it('reads the pool’s start counters by deployment', () => {
    const text = [
      '# TYPE ferry_pool_replicas gauge',
      'ferry_pool_replicas{deployment="local",state="ready"} 1',
      '# TYPE ferry_pool_replica_starts counter',
      'ferry_pool_replica_starts_total{deployment="local"} 3',
      'ferry_pool_replica_starts_total{deployment="big"} 1',
      '# TYPE ferry_pool_cold_starts counter',
      'ferry_pool_cold_starts_total{deployment="local"} 2',
      '# TYPE ferry_pool_cold_start_seconds counter',
      'ferry_pool_cold_start_seconds_total{deployment="local"} 7.5',
      '# EOF',
    ].join('\n')
    const starts = poolStarts(parseMetrics(text))
    expect(starts.get('local')).toEqual({ starts: 3, coldStarts: 2, coldStartSeconds: 7.5 })
    expect(starts.get('big')).toEqual({ starts: 1, coldStarts: 0, coldStartSeconds: 0 })
    expect(starts.has('nowhere')).toBe(false)
  })
})
