// The language and theme choices (the only things the console keeps in the browser).

import { LOCALES, useI18n, type Locale, type MessageKey } from '../i18n'
import { useTheme, type ThemeChoice } from '../theme'
import { SelectField } from './Field'

export function Preferences() {
  const { t, locale, setLocale } = useI18n()
  const { choice, setChoice } = useTheme()
  return (
    <>
      <SelectField
        label={t('layout.language')}
        value={locale}
        onChange={(event) => setLocale(event.target.value as Locale)}
        options={LOCALES.map((value) => ({ value, label: t(`lang.${value}` as MessageKey), lang: value }))}
      />
      <SelectField
        label={t('layout.theme')}
        value={choice}
        onChange={(event) => setChoice(event.target.value as ThemeChoice)}
        options={(['system', 'light', 'dark'] as const).map((value) => ({ value, label: t(`theme.${value}`) }))}
      />
    </>
  )
}
