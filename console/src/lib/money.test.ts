import { describe, expect, it } from 'vitest'
import { formatMoney, fromNanos, isMoney, percentOf, sumMoney, toNanos } from './money'

describe('formatMoney', () => {
  const cases: [string, string, boolean, string][] = [
    ['12.50', 'en-US', true, '$12.50'],
    ['12.5', 'en-US', true, '$12.50'],
    ['3', 'en-US', true, '$3.00'],
    ['0.000001234', 'en-US', true, '$0.000001234'],
    ['1.230000000', 'en-US', true, '$1.23'],
    ['1.100', 'en-US', false, '1.10'],
    ['-3.2', 'en-US', true, '-$3.20'],
    ['-0.5', 'en-US', true, '-$0.50'],
    ['-0.00', 'en-US', true, '$0.00'],
    ['1234567.891', 'en-US', false, '1,234,567.891'],
    ['9223372036.854775807', 'en-US', false, '9,223,372,036.854775807'],
    ['123456789012345678901234567890.5', 'en-US', false, '123,456,789,012,345,678,901,234,567,890.50'],
    ['1234567.891', 'de-DE', false, '1.234.567,891'],
    ['1234.5', 'zh-CN', true, 'US$1,234.50'],
    ['007.10', 'en-US', false, '7.10'],
  ]
  for (const [amount, locale, currency, expected] of cases) {
    it(`${amount} in ${locale}${currency ? ' as USD' : ''}`, () => {
      expect(formatMoney(amount, locale, currency).replace(/\u00a0/g, ' ')).toBe(expected)
    })
  }

  it('puts the sign and the currency where the locale does', () => {
    expect(formatMoney('-1234.5', 'fr-FR', true).replace(/[\u00a0\u202f]/g, ' ')).toBe('-1 234,50 $US')
  })

  it('never rounds away a digit', () => {
    expect(formatMoney('0.999999999', 'en-US', false)).toBe('0.999999999')
  })

  it('leaves what is not a decimal alone', () => {
    expect(formatMoney('abc', 'en-US')).toBe('abc')
    expect(formatMoney('1e3', 'en-US')).toBe('1e3')
  })
})

describe('exact arithmetic', () => {
  it('parses to nanodollars', () => {
    expect(toNanos('12.50')).toBe(12_500_000_000n)
    expect(toNanos('-3.2')).toBe(-3_200_000_000n)
    expect(toNanos('0.000000001')).toBe(1n)
    expect(toNanos('0.0000000001')).toBeNull()
    expect(toNanos('.5')).toBeNull()
  })

  it('prints like the server', () => {
    expect(fromNanos(0n)).toBe('0.00')
    expect(fromNanos(123_000n)).toBe('0.000123')
    expect(fromNanos(-1_050_000_000n)).toBe('-1.05')
  })

  it('sums without float error', () => {
    expect(sumMoney(['0.1', '0.2'])).toBe('0.30')
    expect(sumMoney(['0.000000001', '-0.000000002'])).toBe('-0.000000001')
  })

  it('validates input', () => {
    expect(isMoney('10')).toBe(true)
    expect(isMoney('10.123456789')).toBe(true)
    expect(isMoney('10.1234567891')).toBe(false)
    expect(isMoney('-1')).toBe(false)
    expect(isMoney('-1', { signed: true })).toBe(true)
    expect(isMoney('1,5')).toBe(false)
  })

  it('takes percentages exactly', () => {
    expect(percentOf('5', '10')).toBe(50)
    expect(percentOf('0.000000001', '0.000000003')).toBe(33)
    expect(percentOf('1', '0')).toBeNull()
  })
})
