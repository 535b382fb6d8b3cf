// Light and dark themes: the system's by default, or the one chosen (remembered locally; a
// display preference is all that is ever kept in the browser).

import { createContext, useCallback, useContext, useEffect, useMemo, useState, useSyncExternalStore, type ReactNode } from 'react'

export type ThemeChoice = 'system' | 'light' | 'dark'
export type Theme = 'light' | 'dark'
const STORED = 'ferry.theme'
const DARK = '(prefers-color-scheme: dark)'

function storedChoice(): ThemeChoice {
  try {
    const stored = window.localStorage.getItem(STORED)
    return stored === 'light' || stored === 'dark' ? stored : 'system'
  } catch {
    return 'system'
  }
}

function subscribeToSystem(listener: () => void): () => void {
  const query = window.matchMedia?.(DARK)
  query?.addEventListener('change', listener)
  return () => query?.removeEventListener('change', listener)
}

const systemIsDark = () => window.matchMedia?.(DARK).matches ?? false

interface ThemeState {
  choice: ThemeChoice
  theme: Theme
  setChoice: (choice: ThemeChoice) => void
}

const ThemeContext = createContext<ThemeState>({ choice: 'system', theme: 'light', setChoice: () => {} })

/** Applies the theme before React renders, so the page does not flash the wrong one. */
export function applyStoredTheme(): void {
  const choice = storedChoice()
  const theme = choice === 'system' ? (systemIsDark() ? 'dark' : 'light') : choice
  document.documentElement.dataset.theme = theme
}

export function ThemeProvider({ children }: { children: ReactNode }) {
  const [choice, setChoiceState] = useState<ThemeChoice>(storedChoice)
  const dark = useSyncExternalStore(subscribeToSystem, systemIsDark, () => false)
  const theme: Theme = choice === 'system' ? (dark ? 'dark' : 'light') : choice
  useEffect(() => {
    document.documentElement.dataset.theme = theme
  }, [theme])
  const setChoice = useCallback((next: ThemeChoice) => {
    setChoiceState(next)
    try {
      if (next === 'system') window.localStorage.removeItem(STORED)
      else window.localStorage.setItem(STORED, next)
    } catch {
      // Private browsing: the choice lasts for this page only.
    }
  }, [])
  const value = useMemo(() => ({ choice, theme, setChoice }), [choice, theme, setChoice])
  return <ThemeContext.Provider value={value}>{children}</ThemeContext.Provider>
}

export function useTheme(): ThemeState {
  return useContext(ThemeContext)
}
