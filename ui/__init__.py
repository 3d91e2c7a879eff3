"""What the app's pages share: session state, the graph component and its view, the job panel,
the conversion job, the recipe editor and the cold start. Each page's own body is its file in
app_pages/."""
