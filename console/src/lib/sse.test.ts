import { describe, expect, it } from 'vitest'
import { chatEvents, readChatStream, SseParser, type ChatEvent } from './sse'

describe('SseParser', () => {
  it('splits events across arbitrary chunk boundaries', () => {
    const text = 'data: {"a":1}\n\ndata: {"b":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'
    for (let size = 1; size <= text.length; size++) {
      const parser = new SseParser()
      const events: string[] = []
      for (let at = 0; at < text.length; at += size) events.push(...parser.push(text.slice(at, at + size)))
      events.push(...parser.end())
      expect(events, `chunks of ${size}`).toEqual(['{"a":1}', '{"b":2}', '[DONE]'])
    }
  })

  it('joins multi-line data and ignores other fields', () => {
    const parser = new SseParser()
    expect(parser.push('event: x\nid: 1\ndata: one\ndata:two\n\n')).toEqual(['one\ntwo'])
  })

  it('delivers an unterminated last event at the end', () => {
    const parser = new SseParser()
    expect(parser.push('data: tail')).toEqual([])
    expect(parser.end()).toEqual(['tail'])
  })
})

describe('chatEvents', () => {
  it('reads deltas, the finish and the usage with its cost', () => {
    expect(chatEvents('{"choices":[{"delta":{"content":"Par"},"finish_reason":null}]}')).toEqual([
      { kind: 'delta', content: 'Par' },
    ])
    expect(
      chatEvents(
        '{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"cost":"0.000012","prompt_tokens_details":{"cached_tokens":0}}}',
      ),
    ).toEqual([
      {
        kind: 'usage',
        usage: { prompt_tokens: 9, completion_tokens: 2, cost: '0.000012', prompt_tokens_details: { cached_tokens: 0 } },
      },
    ])
    expect(chatEvents('{"choices":[{"delta":{},"finish_reason":"stop"}]}')).toEqual([{ kind: 'finish', reason: 'stop' }])
  })

  it('reads the error event of a stream that broke, and [DONE]', () => {
    expect(chatEvents('{"error":{"message":"gone","type":"upstream_error"},"choices":[{"delta":{},"finish_reason":"error"}]}')).toEqual([
      { kind: 'error', error: { message: 'gone', type: 'upstream_error' } },
      { kind: 'finish', reason: 'error' },
    ])
    expect(chatEvents('[DONE]')).toEqual([{ kind: 'done' }])
  })
})

describe('readChatStream', () => {
  it('reads a byte stream split inside a multi-byte character', async () => {
    const bytes = new TextEncoder().encode(
      'data: {"choices":[{"delta":{"content":"巴黎"}}]}\n\ndata: {"choices":[{"delta":{"content":"!"}}]}\n\ndata: [DONE]\n\n',
    )
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let at = 0; at < bytes.length; at += 5) controller.enqueue(bytes.slice(at, at + 5))
        controller.close()
      },
    })
    const events: ChatEvent[] = []
    await readChatStream(body, (event) => events.push(event))
    expect(events).toEqual([{ kind: 'delta', content: '巴黎' }, { kind: 'delta', content: '!' }, { kind: 'done' }])
  })
})
