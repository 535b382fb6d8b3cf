// Calls a model as the signed-in user, streamed: tokens appear as they arrive; then the
// call's tokens, cost, cache status, time to first token and total time.

import { useEffect, useRef, useState, type FormEvent } from 'react'
import { Button } from '../../components/Button'
import { SelectField, TextArea, TextField } from '../../components/Field'
import { Figures, Page, Section } from '../../components/Page'
import { ErrorNotice, Loading } from '../../components/Status'
import { useI18n } from '../../i18n'
import { useCallableModels } from '../keys/queries'
import { streamChat, type ChatMessage, type ChatResult } from './chat'

type Phase = 'idle' | 'streaming' | 'done' | 'stopped'

export default function PlaygroundPage() {
  const i18n = useI18n()
  const { t, number, money, duration } = i18n
  const models = useCallableModels()
  const [model, setModel] = useState('')
  const [system, setSystem] = useState('You are a helpful AI assistant.')
  const [draft, setDraft] = useState('')
  const [maxTokens, setMaxTokens] = useState('128')
  const [temperature, setTemperature] = useState('0')
  const [transcript, setTranscript] = useState<ChatMessage[]>([])
  const [answer, setAnswer] = useState('')
  const [phase, setPhase] = useState<Phase>('idle')
  const [result, setResult] = useState<ChatResult | null>(null)
  const [failure, setFailure] = useState<unknown>(null)
  const [invalid, setInvalid] = useState<{ maxTokens?: boolean; temperature?: boolean }>({})
  const abort = useRef<AbortController | null>(null)

  const available = models.data?.data ?? []
  const chosen = model || available[0]?.id || ''
  useEffect(() => () => abort.current?.abort(), [])

  const send = async (event: FormEvent) => {
    event.preventDefault()
    const text = draft.trim()
    if (!text || !chosen || phase === 'streaming') return
    const tokens = Number(maxTokens)
    const heat = Number(temperature)
    const bad = {
      ...(maxTokens.trim() && !(Number.isInteger(tokens) && tokens >= 1) ? { maxTokens: true } : {}),
      ...(temperature.trim() && !(heat >= 0 && heat <= 2) ? { temperature: true } : {}),
    }
    setInvalid(bad)
    if (Object.keys(bad).length) return
    const history: ChatMessage[] = [...transcript, { role: 'user', content: text }]
    const messages: ChatMessage[] = system.trim() ? [{ role: 'system', content: system.trim() }, ...history] : history
    setTranscript(history)
    setDraft('')
    setAnswer('')
    setResult(null)
    setFailure(null)
    setPhase('streaming')
    const controller = new AbortController()
    abort.current = controller
    let received = ''
    try {
      const done = await streamChat({
        model: chosen,
        messages,
        ...(maxTokens.trim() ? { maxTokens: tokens } : {}),
        ...(temperature.trim() ? { temperature: heat } : {}),
        signal: controller.signal,
        onDelta: (delta) => {
          received += delta
          setAnswer(received)
        },
      })
      setResult(done)
      setPhase('done')
    } catch (error) {
      if (controller.signal.aborted) setPhase('stopped')
      else {
        setFailure(error)
        setPhase('idle')
      }
    } finally {
      if (received) setTranscript((now) => [...now, { role: 'assistant', content: received }])
      setAnswer('')
      abort.current = null
    }
  }

  const cache = result?.cache?.toUpperCase()
  const cacheLabel =
    cache === 'HIT' || cache === 'MISS' || cache === 'BYPASS' ? t(`playground.cache.${cache}`) : (result?.cache ?? t('common.none'))
  return (
    <Page title={t('playground.title')}>
      <p className="muted">{t('playground.intro')}</p>
      {models.isPending ? (
        <Loading />
      ) : models.isError ? (
        <ErrorNotice error={models.error} onRetry={() => void models.refetch()} />
      ) : available.length === 0 ? (
        <p>{t('playground.noModels')}</p>
      ) : (
        <div className="playground">
          <div>
            <Section title={t('playground.transcript')}>
              <ol className="transcript" aria-label={t('playground.transcript')}>
                {transcript.map((message, index) => (
                  <li key={index} className={`message message-${message.role}`}>
                    <span className="who">{message.role === 'user' ? t('playground.you') : t('playground.assistant')}</span>
                    <span className="text">{message.content}</span>
                  </li>
                ))}
                {phase === 'streaming' ? (
                  <li className="message message-assistant" aria-busy="true">
                    <span className="who">{t('playground.assistant')}</span>
                    <span className="text" data-testid="streaming-answer">
                      {answer}
                    </span>
                  </li>
                ) : null}
              </ol>
              <p role="status" className="muted">
                {phase === 'streaming'
                  ? t('playground.streaming')
                  : phase === 'done'
                    ? t('playground.done')
                    : phase === 'stopped'
                      ? t('playground.stopped')
                      : ''}
              </p>
              {failure ? <ErrorNotice error={failure} /> : null}
              {result?.streamError ? (
                <div role="alert" className="notice notice-error">
                  <p>{t('playground.streamError', { message: result.streamError.message })}</p>
                </div>
              ) : null}
              <form onSubmit={(event) => void send(event)}>
                <TextArea label={t('playground.message')} value={draft} onChange={(event) => setDraft(event.target.value)} rows={3} required />
                <div className="actions">
                  <Button type="submit" variant="primary" disabled={!draft.trim() || phase === 'streaming'}>
                    {t('playground.send')}
                  </Button>
                  {phase === 'streaming' ? <Button onClick={() => abort.current?.abort()}>{t('playground.stop')}</Button> : null}
                  <Button
                    disabled={phase === 'streaming' || transcript.length === 0}
                    onClick={() => {
                      setTranscript([])
                      setResult(null)
                      setPhase('idle')
                    }}
                  >
                    {t('playground.clear')}
                  </Button>
                </div>
              </form>
            </Section>
            {result ? (
              <Section title={t('playground.lastCall')}>
                <Figures
                  items={[
                    { label: t('playground.promptTokens'), value: number(result.usage?.prompt_tokens) },
                    { label: t('playground.cachedTokens'), value: number(result.usage?.prompt_tokens_details?.cached_tokens ?? 0) },
                    { label: t('playground.completionTokens'), value: number(result.usage?.completion_tokens) },
                    { label: t('playground.cost'), value: money(result.usage?.cost) },
                    { label: t('playground.cache'), value: cacheLabel },
                    { label: t('playground.ttft'), value: duration(result.ttftMs) },
                    { label: t('playground.total'), value: duration(result.totalMs) },
                    { label: t('playground.finish'), value: result.finishReason ?? t('common.none') },
                  ]}
                />
                {result.requestId ? (
                  <p className="muted">
                    {t('playground.requestId')}: <code>{result.requestId}</code>
                  </p>
                ) : null}
              </Section>
            ) : null}
          </div>
          <Section title={t('playground.settings')}>
            <SelectField
              label={t('playground.model')}
              value={chosen}
              onChange={(event) => setModel(event.target.value)}
              options={available.map((one) => ({ value: one.id, label: one.id }))}
            />
            <TextArea label={t('common.optional', { label: t('playground.system') })} value={system} onChange={(event) => setSystem(event.target.value)} rows={3} />
            <TextField
              label={t('playground.maxTokens')}
              inputMode="numeric"
              value={maxTokens}
              onChange={(event) => setMaxTokens(event.target.value)}
              error={invalid.maxTokens ? t('playground.invalidMaxTokens') : undefined}
            />
            <TextField
              label={t('playground.temperature')}
              inputMode="decimal"
              value={temperature}
              onChange={(event) => setTemperature(event.target.value)}
              error={invalid.temperature ? t('playground.invalidTemperature') : undefined}
            />
          </Section>
        </div>
      )}
    </Page>
  )
}
