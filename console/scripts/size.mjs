// Prints the gzipped size of what the console's first page load fetches: every script and
// stylesheet dist/index.html names, and the modules they import statically. Exits non-zero
// past the budget. Lazily loaded pages are listed apart, each with its own static imports.

import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'

const DIST = new URL('../dist/', import.meta.url).pathname
const BUDGET = 400 * 1024
const html = readFileSync(join(DIST, 'index.html'), 'utf8')

const referenced = [...html.matchAll(/(?:src|href)="\/console\/(assets\/[^"]+\.(?:js|css))"/g)].map((match) => match[1])

function staticImports(file) {
  if (!file.endsWith('.js')) return []
  const code = readFileSync(join(DIST, file), 'utf8')
  const found = [...code.matchAll(/(?:\bfrom|\bimport)\s*["']\.\/([^"']+\.js)["']/g)].map((match) => `assets/${match[1]}`)
  return found
}

function closure(roots) {
  const seen = new Set()
  const queue = [...roots]
  while (queue.length) {
    const file = queue.shift()
    if (seen.has(file)) continue
    seen.add(file)
    queue.push(...staticImports(file))
  }
  return seen
}

const gz = (file) => gzipSync(readFileSync(join(DIST, file)), { level: 9 }).length
const kb = (bytes) => `${(bytes / 1024).toFixed(1)} KB`

const initial = closure(referenced)
let total = 0
console.log('First load (gzipped):')
for (const file of [...initial].sort()) {
  const size = gz(file)
  total += size
  console.log(`  ${kb(size).padStart(9)}  ${file}`)
}
console.log(`  ${kb(total).padStart(9)}  total (budget ${kb(BUDGET)})`)

// A signed-in first visit also loads its page's chunk (and what that imports, CSS
// included: Vite names a chunk's CSS after it).
const stem = (file) => file.replace(/^assets\//, '').replace(/-[\w-]{8}\.(js|css)$/, '')
const stylesheets = readdirSync(join(DIST, 'assets'))
  .filter((name) => name.endsWith('.css'))
  .map((name) => `assets/${name}`)
const pages = readdirSync(join(DIST, 'assets'))
  .filter((name) => /^page-.*\.js$/.test(name))
  .map((name) => `assets/${name}`)
let worst = { page: '(sign-in)', bytes: total }
if (pages.length) console.log('First load with each page (gzipped):')
for (const page of pages.sort()) {
  const extra = [...closure([page])].filter((file) => !initial.has(file))
  // Vite names a chunk's CSS as the chunk (`Chart-HASH.js`, `Chart-HASH.css`).
  const names = new Set([page, ...extra].map(stem))
  const css = stylesheets.filter((file) => names.has(stem(file)) && !initial.has(file))
  const bytes = total + [...extra, ...css].reduce((sum, file) => sum + gz(file), 0)
  if (bytes > worst.bytes) worst = { page, bytes }
  console.log(`  ${kb(bytes).padStart(9)}  ${page.replace(/^assets\/page-|-[\w-]{8}\.js$/g, '')}`)
}
console.log(`Largest first load: ${kb(worst.bytes)} (${worst.page}); budget ${kb(BUDGET)}.`)

if (worst.bytes > BUDGET) {
  console.error(`A first load of ${kb(worst.bytes)} is over the ${kb(BUDGET)} budget.`)
  process.exit(1)
}
