// Server-sent events as the chat completions stream sends them: `data: {...}` events, one
// per chunk, ending with `data: [DONE]`.

/** Splits a byte stream's text into the `data` of each event, across chunk boundaries. */
export class SseParser {
  private buffer = ''
  private data: string[] = []

  /** Feeds more text; returns the data of every event it completed. */
  push(text: string): string[] {
    this.buffer += text
    const events: string[] = []
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer)
      // A lone CR at the very end may be the first half of CRLF: wait for more.
      if (!match || (match[0] === '\r' && match.index === this.buffer.length - 1)) break
      const line = this.buffer.slice(0, match.index)
      this.buffer = this.buffer.slice(match.index + match[0].length)
      this.line(line, events)
    }
    return events
  }

  /** Ends the stream: an event not closed by a blank line is still delivered. */
  end(): string[] {
    const events: string[] = []
    if (this.buffer) this.line(this.buffer, events)
    this.buffer = ''
    this.line('', events)
    return events
  }

  private line(line: string, events: string[]): void {
    if (line === '') {
      if (this.data.length) events.push(this.data.join('\n'))
      this.data = []
      return
    }
    if (line.startsWith(':')) return
    const colon = line.indexOf(':')
    const field = colon === -1 ? line : line.slice(0, colon)
    let value = colon === -1 ? '' : line.slice(colon + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    if (field === 'data') this.data.push(value)
  }
}

export interface StreamUsage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens?: number
  cost?: string
  prompt_tokens_details?: { cached_tokens?: number }
}

export interface StreamError {
  message: string
  type?: string
  code?: string | null
}

/** What one event of a chat completions stream says. */
export type ChatEvent =
  | { kind: 'delta'; content: string }
  | { kind: 'usage'; usage: StreamUsage }
  | { kind: 'finish'; reason: string }
  | { kind: 'error'; error: StreamError }
  | { kind: 'done' }

interface ChunkShape {
  choices?: { delta?: { content?: string | null }; finish_reason?: string | null }[]
  usage?: StreamUsage | null
  error?: StreamError
}

/** The events in one `data` payload: a chunk can carry content, a finish and usage at once. */
export function chatEvents(data: string): ChatEvent[] {
  if (data.trim() === '[DONE]') return [{ kind: 'done' }]
  let chunk: ChunkShape
  try {
    chunk = JSON.parse(data) as ChunkShape
  } catch {
    return [{ kind: 'error', error: { message: `unreadable stream event: ${data.slice(0, 80)}` } }]
  }
  const events: ChatEvent[] = []
  if (chunk.error) events.push({ kind: 'error', error: chunk.error })
  for (const choice of chunk.choices ?? []) {
    const content = choice.delta?.content
    if (content) events.push({ kind: 'delta', content })
    if (choice.finish_reason) events.push({ kind: 'finish', reason: choice.finish_reason })
  }
  if (chunk.usage) events.push({ kind: 'usage', usage: chunk.usage })
  return events
}

/** Reads a chat completions stream to its end, calling `onEvent` for each event as it comes. */
export async function readChatStream(
  body: ReadableStream<Uint8Array>,
  onEvent: (event: ChatEvent) => void,
): Promise<void> {
  const parser = new SseParser()
  const decoder = new TextDecoder()
  const reader = body.getReader()
  const deliver = (datas: string[]) => {
    for (const data of datas) for (const event of chatEvents(data)) onEvent(event)
  }
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      deliver(parser.push(decoder.decode(value, { stream: true })))
    }
    deliver(parser.push(decoder.decode()))
    deliver(parser.end())
  } finally {
    reader.releaseLock()
  }
}
