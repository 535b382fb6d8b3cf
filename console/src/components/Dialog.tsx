// A modal dialog on the native <dialog>: `showModal` gives the focus trap, Escape and the
// inert page behind; focus returns to what opened it. Its content exists only while open,
// so every opening starts fresh (a new idempotency key, an empty form).

import { useEffect, useId, useRef, type ReactNode } from 'react'
import { useI18n } from '../i18n'

export interface DialogProps {
  open: boolean
  title: string
  onClose: () => void
  children: ReactNode
  /** Whether Escape and the close button may dismiss it (not while a secret must be seen). */
  dismissable?: boolean
}

export function Dialog({ open, title, onClose, children, dismissable = true }: DialogProps) {
  const { t } = useI18n()
  const ref = useRef<HTMLDialogElement>(null)
  const opener = useRef<Element | null>(null)
  const titleId = useId()

  useEffect(() => {
    const dialog = ref.current
    if (!dialog) return
    if (open && !dialog.open) {
      opener.current = document.activeElement
      if (typeof dialog.showModal === 'function') dialog.showModal()
      else dialog.setAttribute('open', '')
    } else if (!open && dialog.open) {
      if (typeof dialog.close === 'function') dialog.close()
      else dialog.removeAttribute('open')
    }
  }, [open])

  useEffect(() => {
    const dialog = ref.current
    if (!dialog) return
    const closed = () => {
      const back = opener.current
      if (back instanceof HTMLElement && back.isConnected) back.focus()
      onClose()
    }
    const cancelled = (event: Event) => {
      if (!dismissable) event.preventDefault()
    }
    dialog.addEventListener('close', closed)
    dialog.addEventListener('cancel', cancelled)
    return () => {
      dialog.removeEventListener('close', closed)
      dialog.removeEventListener('cancel', cancelled)
    }
  }, [onClose, dismissable])

  return (
    <dialog ref={ref} className="dialog" aria-labelledby={titleId}>
      {open && (
        <>
          <div className="dialog-head">
            <h2 id={titleId}>{title}</h2>
            {dismissable && (
              <button type="button" className="btn btn-small" onClick={() => ref.current?.close()}>
                {t('common.close')}
              </button>
            )}
          </div>
          <div className="dialog-body">{children}</div>
        </>
      )}
    </dialog>
  )
}

/** Buttons at the foot of a dialog. */
export function DialogActions({ children }: { children: ReactNode }) {
  return <div className="dialog-actions">{children}</div>
}
