import type { ButtonHTMLAttributes } from 'react'

type Variant = 'primary' | 'secondary' | 'danger' | 'link'

export interface ButtonProps extends ButtonHTMLAttributes<HTMLButtonElement> {
  variant?: Variant
  small?: boolean
  /** Work is under way: the button is disabled and says so to assistive technology. */
  busy?: boolean
}

export function Button({ variant = 'secondary', small, busy, className, type = 'button', disabled, ...rest }: ButtonProps) {
  const classes = [variant === 'link' ? 'btn-link' : `btn btn-${variant}`, small ? 'btn-small' : '', className ?? '']
  return (
    <button
      type={type}
      className={classes.filter(Boolean).join(' ')}
      disabled={disabled || busy}
      aria-busy={busy || undefined}
      {...rest}
    />
  )
}
