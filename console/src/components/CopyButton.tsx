import { useState } from 'react'
import { useI18n } from '../i18n'
import { Button } from './Button'

export function CopyButton({ text, label }: { text: string; label?: string }) {
  const { t } = useI18n()
  const [result, setResult] = useState<'copied' | 'failed' | null>(null)
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text)
      setResult('copied')
    } catch {
      setResult('failed')
    }
  }
  return (
    <>
      <Button variant="primary" onClick={() => void copy()}>
        {label ?? t('common.copy')}
      </Button>
      <span role="status" className="muted">
        {result === 'copied' ? t('common.copied') : result === 'failed' ? t('common.copyFailed') : ''}
      </span>
    </>
  )
}
