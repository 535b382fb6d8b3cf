// For iterating on the console without relinking ferry (which embeds console/dist when it is
// compiled): serves the freshly built dist/ the way ferry serves it (same headers, the shell
// for every page path) and passes everything else to the real ferry, Host header and all (so
// ferry sees the origin the browser uses: its same-origin checks and OIDC redirect URI hold).
// Used only when FERRY_E2E_DIST=1; by default the tests talk to ferry's own embedded console.

import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs'
import { createServer, request, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { extname, join, normalize, resolve } from 'node:path'

const DIST = resolve(import.meta.dirname, '..', 'dist')
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
}
const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.html': 'text/html; charset=utf-8',
}

export class DistProxy {
  private server: Server

  constructor(private readonly ferryUrl: string) {
    const upstream = new URL(ferryUrl)
    this.server = createServer((incoming, outgoing) => {
      const path = new URL(incoming.url ?? '/', 'http://proxy.invalid').pathname
      if (path.startsWith('/console/')) {
        const inside = normalize(path.slice('/console/'.length))
        const file = join(DIST, inside)
        if (inside && !inside.startsWith('..') && inside !== 'index.html' && existsSync(file) && statSync(file).isFile()) {
          const cache = inside.startsWith('assets/') ? 'public, max-age=31536000, immutable' : 'no-cache'
          outgoing.writeHead(200, { ...SECURITY_HEADERS, 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': cache })
          createReadStream(file).pipe(outgoing)
          return
        }
        if (inside.startsWith('assets/')) {
          outgoing.writeHead(404, SECURITY_HEADERS).end()
          return
        }
        outgoing
          .writeHead(200, { ...SECURITY_HEADERS, 'content-type': TYPES['.html'], 'cache-control': 'no-store' })
          .end(readFileSync(join(DIST, 'index.html')))
        return
      }
      const forwarded = request(
        { host: upstream.hostname, port: upstream.port, method: incoming.method, path: incoming.url, headers: incoming.headers },
        (answer) => {
          outgoing.writeHead(answer.statusCode ?? 502, answer.headers)
          answer.pipe(outgoing)
        },
      )
      forwarded.on('error', () => outgoing.destroy())
      incoming.pipe(forwarded)
    })
  }

  async start(): Promise<this> {
    await new Promise<void>((done) => this.server.listen(0, '127.0.0.1', done))
    return this
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections()
    await new Promise<void>((done) => this.server.close(() => done()))
  }
}
