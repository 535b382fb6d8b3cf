import { describe, expect, it } from 'vitest'
import { toCsv, type CsvColumn } from './csv'

interface Row {
  day: string
  model: string
  cost: string
  requests: number
}

const columns: CsvColumn<Row>[] = [
  { header: 'day', value: (row) => row.day },
  { header: 'model', value: (row) => row.model },
  { header: 'cost_usd', value: (row) => row.cost },
  { header: 'requests', value: (row) => row.requests },
]

describe('toCsv', () => {
  it('writes a header and a line per row, CRLF-terminated', () => {
    expect(toCsv(columns, [{ day: '2026-01-02', model: 'm', cost: '0.000001234', requests: 3 }])).toBe(
      'day,model,cost_usd,requests\r\n2026-01-02,m,0.000001234,3\r\n',
    )
  })

  it('quotes commas, quotes and newlines', () => {
    const csv = toCsv(columns, [{ day: 'a,b', model: 'say "hi"', cost: 'x\ny', requests: 0 }])
    expect(csv.split('\r\n')[1]).toBe('"a,b","say ""hi""","x\ny",0')
  })

  it('defuses formulas but keeps negative amounts', () => {
    const csv = toCsv(columns, [{ day: '=HYPERLINK("x")', model: '@cmd', cost: '-3.2', requests: -1 }])
    expect(csv.split('\r\n')[1]).toBe(`"'=HYPERLINK(""x"")",'@cmd,-3.2,-1`)
  })

  it('writes empty cells for missing values', () => {
    const sparse: CsvColumn<{ a?: string }>[] = [{ header: 'a', value: (row) => row.a }]
    expect(toCsv(sparse, [{}])).toBe('a\r\n\r\n')
  })
})
