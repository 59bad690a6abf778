package catalog

// Catalogue returns every case, in the order the runner plays them: the alarm cases last, so
// that an alarm left on by a failing hook cannot disturb the others.
func Catalogue() []Case {
	var cs []Case
	for _, group := range [][]Case{wireCases(), contentCases(), floodCases(), permissionCases(), argumentCases(), memoryCases(), alarmCases()} {
		cs = append(cs, group...)
	}
	return cs
}
