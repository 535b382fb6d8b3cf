import { describe, expect, it } from 'vitest'
import { consolePath, href, matchPath } from './router'

describe('router', () => {
  it('works under the console base', () => {
    expect(href('/keys')).toBe('/console/keys')
    expect(consolePath('/console/keys')).toBe('/keys')
    expect(consolePath('/console')).toBe('/')
    expect(consolePath('/console/')).toBe('/')
  })

  it('matches patterns with parameters', () => {
    expect(matchPath('/tenants/:id', '/tenants/ten_1')).toEqual({ id: 'ten_1' })
    expect(matchPath('/tenants/:id/keys', '/tenants/a%2Fb/keys')).toEqual({ id: 'a/b' })
    expect(matchPath('/tenants/:id', '/tenants')).toBeNull()
    expect(matchPath('/', '/')).toEqual({})
  })
})
