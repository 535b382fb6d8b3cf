// A real `ferry serve` for the browser tests: its own data directory (with a `ferry.toml`
// when a test gives one), a free port, an operator key of Ferry's format; like
// tests/e2e/conftest.py does it for the Python suite.

import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'

const ROOT = resolve(import.meta.dirname, '..', '..')
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567'

/** A key of Ferry's format, `fy_<12>_<32>`, made the way Ferry makes them. */
export function makeKey(): string {
  const part = (length: number) => Array.from(randomBytes(length), (byte) => ALPHABET[byte & 31]).join('')
  return `fy_${part(12)}_${part(32)}`
}

export function ferryBinary(): string {
  return process.env.FERRY_BIN ? resolve(process.env.FERRY_BIN) : join(ROOT, 'target', 'debug', 'ferry')
}

/** Where pulled models are kept (shared with the Rust and Python tests). */
export function modelsDir(): string {
  return resolve(process.env.FERRY_MODELS_DIR || join(ROOT, 'target', 'ferry-models'))
}

/** The chat model the real-model tests use; CI pulls it before the browser tests. */
export const LOCAL_CHAT_MODEL = 'smollm2-135m-instruct'

/** Whether `ferry models pull <model>` has put the model in `modelsDir()`. */
export function modelPulled(model = LOCAL_CHAT_MODEL): boolean {
  const dir = join(modelsDir(), model)
  return existsSync(dir) && readdirSync(dir).some((name) => name.endsWith('.gguf'))
}

export interface FerryOptions {
  /**
   * Serve the local chat model from `modelsDir()` (through the GPU pool's workers), and no
   * embedding model (CI pulls only the chat one); off by default.
   */
  localModels?: boolean
  /** Written to `<data-dir>/ferry.toml` before the start: the server's configuration. */
  toml?: string
  env?: Record<string, string>
  startTimeoutMs?: number
}

export class Ferry {
  readonly operatorKey = makeKey()
  readonly lines: string[] = []
  url = ''
  private process: ChildProcess | null = null
  private dataDir = mkdtempSync(join(tmpdir(), 'ferry-console-e2e-'))

  async start(options: FerryOptions = {}): Promise<this> {
    const binary = ferryBinary()
    if (!existsSync(binary)) throw new Error(`no ferry binary at ${binary}: run \`cargo build\` first (or set FERRY_BIN)`)
    if (options.toml !== undefined) writeFileSync(join(this.dataDir, 'ferry.toml'), options.toml)
    const models = options.localModels
      ? ['--models-dir', modelsDir(), '--chat-model', LOCAL_CHAT_MODEL, '--embedding-model', 'none']
      : ['--no-local-models']
    const args = ['serve', '--addr', '127.0.0.1:0', '--data-dir', this.dataDir, ...models]
    // The caller's own ferry settings would change what is tested: the config is the test's.
    const inherited = { ...process.env }
    delete inherited.FERRY_CONFIG
    delete inherited.FERRY_NO_LOCAL_MODELS
    const child = spawn(binary, args, {
      env: {
        ...inherited,
        FERRY_OPERATOR_KEY: this.operatorKey,
        FERRY_LOG: 'warn',
        ...options.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.process = child
    const { stdout, stderr } = child
    if (!stdout || !stderr) throw new Error('ferry was started without pipes')
    const lines = createInterface({ input: stdout })
    createInterface({ input: stderr }).on('line', (line) => this.lines.push(line))
    this.url = await new Promise<string>((resolveUrl, reject) => {
      const timer = setTimeout(() => reject(new Error(`ferry did not start:\n${this.lines.join('\n')}`)), options.startTimeoutMs ?? 30_000)
      lines.on('line', (line) => {
        this.lines.push(line)
        if (line.startsWith('listening on ')) {
          clearTimeout(timer)
          resolveUrl(line.split(' ').at(-1) ?? '')
        }
      })
      child.on('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`ferry exited (${code}):\n${this.lines.join('\n')}`))
      })
    })
    return this
  }

  async stop(): Promise<void> {
    const child = this.process
    if (child && child.exitCode === null) {
      const exited = new Promise((done) => child.once('exit', done))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(timer)
    }
    rmSync(this.dataDir, { recursive: true, force: true })
  }

  /** An admin API call with the operator key (for setting up what a test needs). */
  async admin<T = Record<string, unknown>>(method: string, path: string, body?: unknown, key = this.operatorKey): Promise<{ status: number; body: T }> {
    const response = await fetch(`${this.url}/admin/v1${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    const text = await response.text()
    return { status: response.status, body: (text ? JSON.parse(text) : {}) as T }
  }

  /** A call to the OpenAI-compatible API with a key. */
  async v1(method: string, path: string, key: string, body?: unknown): Promise<Response> {
    return fetch(`${this.url}/v1${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
  }
}

function flag(value: string | undefined): boolean | null {
  if (value === undefined || value === '') return null
  return !['0', 'false', 'no'].includes(value.toLowerCase())
}

/**
 * Whether a missing local model fails the real-model tests instead of skipping them:
 * FERRY_REQUIRE_MODEL=1, or CI set (FERRY_REQUIRE_MODEL=0 turns it off even there).
 */
export function modelRequired(): boolean {
  return flag(process.env.FERRY_REQUIRE_MODEL) ?? flag(process.env.CI) ?? false
}

/** What to do when the model is missing, said once for every real-model test. */
export const PULL_HINT = `${LOCAL_CHAT_MODEL} is not pulled into ${modelsDir()}: run \`ferry models pull ${LOCAL_CHAT_MODEL} --models-dir ${modelsDir()}\` (or set FERRY_MODELS_DIR)`
