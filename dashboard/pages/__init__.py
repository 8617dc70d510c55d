"""One module per page: `layout(ctx, ...)` draws it, `register(app, ctx)` adds its callbacks."""
