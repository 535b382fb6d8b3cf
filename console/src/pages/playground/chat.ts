// One streamed chat completion through the API client (session cookie, CSRF header), read
// as it arrives.

import { api } from '../../api/client'
import { errorFrom } from '../../api/errors'
import { readChatStream, type StreamError, type StreamUsage } from '../../lib/sse'

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant'
  content: string
}

export interface ChatRequest {
  model: string
  messages: ChatMessage[]
  maxTokens?: number
  temperature?: number
  signal: AbortSignal
  onDelta: (text: string) => void
}

export interface ChatResult {
  usage: StreamUsage | null
  /** `x-ferry-cache`: HIT, MISS or BYPASS. */
  cache: string | null
  requestId: string | null
  finishReason: string | null
  /** From sending the request to the first token, and to the end of the stream. */
  ttftMs: number | null
  totalMs: number
  /** An error event in the stream after it began (the call is charged for what arrived). */
  streamError: StreamError | null
}

export async function streamChat(request: ChatRequest, clock: () => number = () => performance.now()): Promise<ChatResult> {
  const started = clock()
  const { response, data, error } = await api.POST('/v1/chat/completions', {
    body: {
      model: request.model,
      messages: request.messages,
      stream: true,
      stream_options: { include_usage: true },
      ...(request.maxTokens ? { max_tokens: request.maxTokens } : {}),
      ...(request.temperature !== undefined ? { temperature: request.temperature } : {}),
    },
    parseAs: 'stream',
    signal: request.signal,
  })
  if (!response.ok || !data) throw errorFrom(response.status, error)
  const result: ChatResult = {
    usage: null,
    cache: response.headers.get('x-ferry-cache'),
    requestId: response.headers.get('x-request-id'),
    finishReason: null,
    ttftMs: null,
    totalMs: 0,
    streamError: null,
  }
  await readChatStream(data as ReadableStream<Uint8Array>, (event) => {
    switch (event.kind) {
      case 'delta':
        if (result.ttftMs === null) result.ttftMs = clock() - started
        request.onDelta(event.content)
        break
      case 'usage':
        result.usage = event.usage
        break
      case 'finish':
        result.finishReason = event.reason
        break
      case 'error':
        result.streamError = event.error
        break
      case 'done':
        break
    }
  })
  result.totalMs = clock() - started
  return result
}
