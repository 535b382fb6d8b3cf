import { describe, expect, it } from 'vitest'
import { en, parts } from './en'
import { detectLocale, translate } from './index'
import { zhCN } from './zh-CN'

const placeholders = (text: string) => [...text.matchAll(/\{(\w+)\}/g)].map((match) => match[1]).sort()

describe('translations', () => {
  it('have the same keys in every language', () => {
    expect(Object.keys(zhCN).sort()).toEqual(Object.keys(en).sort())
  })

  it('have no empty strings', () => {
    for (const [language, dictionary] of Object.entries({ en, zhCN })) {
      for (const [key, text] of Object.entries(dictionary)) expect(text.trim(), `${language} ${key}`).not.toBe('')
    }
  })

  it('use the same placeholders in every language', () => {
    for (const key of Object.keys(en) as (keyof typeof en)[]) {
      expect(placeholders(zhCN[key]), key).toEqual(placeholders(en[key]))
    }
  })

  it('give each page its own keys (no part overrides another)', () => {
    const counted = parts.reduce((sum, part) => sum + Object.keys(part.en).length, 0)
    expect(Object.keys(en).length).toBe(counted)
    for (const part of parts) expect(Object.keys(part.zhCN).sort()).toEqual(Object.keys(part.en).sort())
  })

  it('translate every string (names that are the same in both aside)', () => {
    const same = new Set(['Ferry', 'ID', 'English', '简体中文', '—'])
    const untranslated = (Object.keys(en) as (keyof typeof en)[]).filter((key) => zhCN[key] === en[key] && !same.has(en[key]))
    expect(untranslated).toEqual([])
  })
})

describe('locale choice', () => {
  it('prefers what was stored, then the browser languages', () => {
    expect(detectLocale(['en-US'], 'zh-CN')).toBe('zh-CN')
    expect(detectLocale(['zh-Hans-CN', 'en'], null)).toBe('zh-CN')
    expect(detectLocale(['zh-CN'], 'fr')).toBe('zh-CN')
    expect(detectLocale(['fr-FR', 'en-GB'], null)).toBe('en')
    expect(detectLocale([], null)).toBe('en')
  })

  it('fills placeholders', () => {
    expect(translate('en', 'common.pageOf', { shown: 3 })).toContain('3')
  })
})
