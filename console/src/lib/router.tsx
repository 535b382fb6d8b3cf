// A small router over the History API, for paths under the console's base (`/console/`).

import { useSyncExternalStore, type AnchorHTMLAttributes, type MouseEvent } from 'react'

/** Where the server serves the console; Vite's `base` in vite.config.ts says the same. */
export const BASE = '/console'
const NAVIGATED = 'ferry:navigate'

function subscribe(listener: () => void): () => void {
  window.addEventListener('popstate', listener)
  window.addEventListener(NAVIGATED, listener)
  return () => {
    window.removeEventListener('popstate', listener)
    window.removeEventListener(NAVIGATED, listener)
  }
}

/** The path inside the console (`/keys`), from the address bar's (`/console/keys`). */
export function consolePath(pathname: string): string {
  const inside = pathname.startsWith(BASE) ? pathname.slice(BASE.length) : pathname
  return inside === '' ? '/' : inside
}

export function href(to: string): string {
  return `${BASE}${to.startsWith('/') ? to : `/${to}`}`
}

export function navigate(to: string, options: { replace?: boolean } = {}): void {
  const url = href(to)
  if (options.replace) window.history.replaceState(null, '', url)
  else window.history.pushState(null, '', url)
  window.dispatchEvent(new Event(NAVIGATED))
}

export interface Location {
  path: string
  search: URLSearchParams
}

const snapshot = () => `${window.location.pathname}${window.location.search}`

export function useLocation(): Location {
  const url = useSyncExternalStore(subscribe, snapshot, () => '/')
  const parsed = new URL(url, 'http://console.invalid')
  return { path: consolePath(parsed.pathname), search: parsed.searchParams }
}

/** The parameters of `path` if it matches `pattern` (`/tenants/:id`), else null. */
export function matchPath(pattern: string, path: string): Record<string, string> | null {
  const want = pattern.split('/').filter(Boolean)
  const got = path.split('/').filter(Boolean)
  if (want.length !== got.length) return null
  const params: Record<string, string> = {}
  for (const [index, part] of want.entries()) {
    const actual = got[index] ?? ''
    if (part.startsWith(':')) {
      try {
        params[part.slice(1)] = decodeURIComponent(actual)
      } catch {
        return null
      }
    } else if (part !== actual) return null
  }
  return params
}

type LinkProps = Omit<AnchorHTMLAttributes<HTMLAnchorElement>, 'href'> & { to: string }

export function Link({ to, onClick, ...rest }: LinkProps) {
  const handle = (event: MouseEvent<HTMLAnchorElement>) => {
    onClick?.(event)
    const plain = event.button === 0 && !event.metaKey && !event.ctrlKey && !event.shiftKey && !event.altKey
    if (event.defaultPrevented || !plain || rest.target) return
    event.preventDefault()
    navigate(to)
  }
  // The caller gives the content (children come in `rest`).
  // eslint-disable-next-line jsx-a11y/anchor-has-content
  return <a href={href(to)} onClick={handle} {...rest} />
}
