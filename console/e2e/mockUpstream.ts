// An OpenAI-compatible upstream on loopback, like tests/e2e/mock_upstream.py: it answers
// "You said: <last user message>", word by word when streamed, with usage.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

interface ChatBody {
  model?: string
  stream?: boolean
  stream_options?: { include_usage?: boolean }
  messages?: { role: string; content: unknown }[]
}

function readBody(request: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = ''
    request.setEncoding('utf8')
    request.on('data', (chunk: string) => (text += chunk))
    request.on('end', () => resolve(text))
    request.on('error', reject)
  })
}

function words(text: string): string[] {
  return text.split(' ').map((word, index) => (index === 0 ? word : ` ${word}`))
}

async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
  const body = JSON.parse((await readBody(request)) || '{}') as ChatBody
  if (request.method !== 'POST' || request.url !== '/v1/chat/completions') {
    response.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: 'no such path' } }))
    return
  }
  const last = [...(body.messages ?? [])].reverse().find((message) => message.role === 'user')
  const text = `You said: ${String(last?.content ?? '')}`
  const prompt = (body.messages ?? []).reduce((sum, message) => sum + String(message.content ?? '').split(/\s+/).length + 4, 0)
  const parts = words(text)
  const usage = { prompt_tokens: prompt, completion_tokens: parts.length, total_tokens: prompt + parts.length }
  const model = body.model ?? 'echo'
  if (!body.stream) {
    response.writeHead(200, { 'content-type': 'application/json' }).end(
      JSON.stringify({
        id: 'up-1',
        object: 'chat.completion',
        created: 1,
        model,
        choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
        usage,
      }),
    )
    return
  }
  response.writeHead(200, { 'content-type': 'text/event-stream', connection: 'close' })
  const event = (payload: unknown) => response.write(`data: ${typeof payload === 'string' ? payload : JSON.stringify(payload)}\n\n`)
  const chunk = (choices: unknown[], extra: object = {}) => event({ id: 'up-1', object: 'chat.completion.chunk', created: 1, model, choices, ...extra })
  for (const [index, word] of parts.entries()) {
    chunk([{ index: 0, delta: index ? { content: word } : { role: 'assistant', content: word }, finish_reason: null }])
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  chunk([{ index: 0, delta: {}, finish_reason: 'stop' }])
  if (body.stream_options?.include_usage) chunk([], { usage })
  event('[DONE]')
  response.end()
}

export class MockUpstream {
  private server: Server

  constructor() {
    this.server = createServer((request, response) => {
      handle(request, response).catch(() => response.destroy())
    })
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve))
    return this
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1`
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}
