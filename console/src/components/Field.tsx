// Labelled form controls: every control has a visible label, its hint and error tied to it
// with aria-describedby, and aria-invalid when it is wrong.

import { useId, type ComponentProps, type ReactNode } from 'react'

interface Common {
  label: ReactNode
  hint?: ReactNode
  error?: ReactNode
  className?: string
}

function useDescribed(hint: ReactNode, error: ReactNode) {
  const id = useId()
  const hintId = hint ? `${id}-hint` : undefined
  const errorId = error ? `${id}-error` : undefined
  const describedBy = [hintId, errorId].filter(Boolean).join(' ') || undefined
  return { id, hintId, errorId, describedBy }
}

function Notes({ hint, error, hintId, errorId }: { hint: ReactNode; error: ReactNode; hintId?: string; errorId?: string }) {
  return (
    <>
      {hint ? (
        <p id={hintId} className="hint">
          {hint}
        </p>
      ) : null}
      {error ? (
        <p id={errorId} className="field-error">
          {error}
        </p>
      ) : null}
    </>
  )
}

export function TextField({ label, hint, error, className, ...input }: Common & ComponentProps<'input'>) {
  const { id, hintId, errorId, describedBy } = useDescribed(hint, error)
  return (
    <div className={`field ${className ?? ''}`}>
      <label htmlFor={input.id ?? id}>{label}</label>
      <input id={id} aria-describedby={describedBy} aria-invalid={error ? true : undefined} {...input} />
      <Notes hint={hint} error={error} hintId={hintId} errorId={errorId} />
    </div>
  )
}

export function TextArea({ label, hint, error, className, ...area }: Common & ComponentProps<'textarea'>) {
  const { id, hintId, errorId, describedBy } = useDescribed(hint, error)
  return (
    <div className={`field ${className ?? ''}`}>
      <label htmlFor={id}>{label}</label>
      <textarea id={id} aria-describedby={describedBy} aria-invalid={error ? true : undefined} {...area} />
      <Notes hint={hint} error={error} hintId={hintId} errorId={errorId} />
    </div>
  )
}

export interface Option {
  value: string
  label: string
  /** The option's own language, where it differs from the page's (a language's name). */
  lang?: string
}

export function SelectField({
  label,
  hint,
  error,
  className,
  options,
  ...select
}: Common & ComponentProps<'select'> & { options: readonly Option[] }) {
  const { id, hintId, errorId, describedBy } = useDescribed(hint, error)
  return (
    <div className={`field ${className ?? ''}`}>
      <label htmlFor={id}>{label}</label>
      <select id={id} aria-describedby={describedBy} aria-invalid={error ? true : undefined} {...select}>
        {options.map((option) => (
          <option key={option.value} value={option.value} lang={option.lang}>
            {option.label}
          </option>
        ))}
      </select>
      <Notes hint={hint} error={error} hintId={hintId} errorId={errorId} />
    </div>
  )
}

export function Checkbox({ label, hint, className, ...input }: Omit<Common, 'error'> & ComponentProps<'input'>) {
  const { id, hintId, describedBy } = useDescribed(hint, null)
  return (
    <div className={`field check ${className ?? ''}`}>
      <input id={id} type="checkbox" aria-describedby={describedBy} {...input} />
      <label htmlFor={id}>{label}</label>
      {hint ? (
        <p id={hintId} className="hint">
          {hint}
        </p>
      ) : null}
    </div>
  )
}
